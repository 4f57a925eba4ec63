// What "no half-written key" means, checked straight in the database: every
// write of a key is one transaction, so a crash or a lost connection leaves
// either all of its rows or none of them.
import mysql from "mysql2/promise";
import type { RowDataPacket } from "mysql2/promise";

const CHECKS: readonly { problem: string; sql: string }[] = [
  {
    problem: "key without a current secret",
    sql: `SELECT k.id FROM api_keys k
          WHERE NOT EXISTS (SELECT 1 FROM key_secrets s WHERE s.key_id = k.id AND s.expire_time IS NULL)`,
  },
  {
    problem: "key with more than one current secret",
    sql: "SELECT key_id AS id FROM key_secrets WHERE expire_time IS NULL GROUP BY key_id HAVING COUNT(*) > 1",
  },
  {
    problem: "secret without its key",
    sql: "SELECT s.key_id AS id FROM key_secrets s LEFT JOIN api_keys k ON k.id = s.key_id WHERE k.id IS NULL",
  },
  {
    // A lookup row may outlive its secret (written first, deleted last), never the other way round.
    problem: "secret without its lookup row",
    sql: `SELECT s.key_id AS id FROM key_secrets s
          LEFT JOIN key_lookup l ON l.hash = s.hash AND l.organization_id = s.organization_id AND l.key_id = s.key_id
          WHERE l.hash IS NULL`,
  },
  {
    problem: "secret filed under another organization than its key's",
    sql: "SELECT s.key_id AS id FROM key_secrets s JOIN api_keys k ON k.id = s.key_id WHERE k.organization_id <> s.organization_id",
  },
  {
    problem: "key without its key.create audit event",
    sql: `SELECT k.id FROM api_keys k
          WHERE NOT EXISTS (SELECT 1 FROM audit_events a WHERE a.key_id = k.id AND a.action = 'key.create')`,
  },
  {
    problem: "key.create audit event without its key",
    sql: `SELECT a.key_id AS id FROM audit_events a LEFT JOIN api_keys k ON k.id = a.key_id
          WHERE a.action = 'key.create' AND k.id IS NULL`,
  },
  {
    problem: "key without its organization",
    sql: "SELECT k.id FROM api_keys k LEFT JOIN organizations o ON o.id = k.organization_id WHERE o.id IS NULL",
  },
  {
    // Only RevokeKey revokes in the tests that use this check: one event per revoked key.
    problem: "revoked key without exactly one key.revoke audit event",
    sql: `SELECT k.id FROM api_keys k
          WHERE k.revoke_time IS NOT NULL
            AND (SELECT COUNT(*) FROM audit_events a WHERE a.key_id = k.id AND a.action = 'key.revoke') <> 1`,
  },
  {
    problem: "key.revoke audit event of a key that is not revoked",
    sql: `SELECT a.key_id AS id FROM audit_events a JOIN api_keys k ON k.id = a.key_id
          WHERE a.action = 'key.revoke' AND k.revoke_time IS NULL`,
  },
];

/** Every violation in the database at `url`, as "problem: key id"; empty when consistent. */
export async function halfWrittenKeys(url: string): Promise<string[]> {
  const conn = await mysql.createConnection(url);
  try {
    const found: string[] = [];
    for (const { problem, sql } of CHECKS) {
      const [rows] = await conn.query<RowDataPacket[]>(sql);
      for (const row of rows) found.push(`${problem}: ${row.id as string}`);
    }
    return found;
  } finally {
    await conn.end();
  }
}
