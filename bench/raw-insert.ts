// CreateKey's yardstick: the rows one CreateKey adds (the hash's lookup row,
// the key, its secret hash, the audit event, and the organization and creator when they are new),
// written with plain mysql2 statements in one transaction — no gRPC, no
// validation, no read-back — at the same concurrency, against the same database.
import type { Pool } from "mysql2/promise";
import { SecretHasher } from "../src/keys/hashing.js";
import { generateSecret, newKeyId, previewOf, randomBase62 } from "../src/keys/key-format.js";
import { nextPosition } from "../src/store/positions.js";
import { Samples } from "./stats.js";

export interface RawResult {
  requests: number;
  /** Transactions during the warm-up (not in requests). */
  warmupRequests: number;
  rps: number;
  p50Ms: number;
  p99Ms: number;
}

/** The audit row the service writes with a change, by an owner through the bench's caller. */
function auditRow(organizationId: string, userId: string, action: string, keyId: string, details: string, now: Date) {
  return {
    seq: nextPosition(),
    id: `evt_${randomBase62(20)}`,
    organization_id: organizationId,
    time: now,
    actor_user_id: userId,
    actor_role: 4,
    caller: "bench",
    action,
    key_id: keyId,
    details,
  };
}

async function insertOne(pool: Pool, hasher: SecretHasher, organizationId: string, userId: string): Promise<string> {
  const secret = generateSecret("sk");
  const id = newKeyId();
  const now = new Date();
  const hash = hasher.hash(secret);
  const conn = await pool.getConnection();
  try {
    // The lookup row on its own, before the transaction, as the store writes it.
    await conn.query("INSERT INTO key_lookup (hash, organization_id, key_id) VALUES (?, ?, ?)", [hash, organizationId, id]);
    await conn.beginTransaction();
    await conn.query("INSERT INTO api_keys SET ?", [
      {
        seq: nextPosition(),
        id,
        organization_id: organizationId,
        project_id: "",
        name: "bench",
        prefix: "sk",
        preview: previewOf(secret),
        scopes: '["documents:read"]',
        created_by: userId,
        create_time: now,
        update_time: now,
        metadata: "{}",
      },
    ]);
    await conn.query("INSERT INTO key_secrets (organization_id, hash, key_id, expire_time) VALUES (?, ?, ?, NULL)", [organizationId, hash, id]);
    await conn.query("INSERT IGNORE INTO organizations (id, api_access_enabled, update_time) VALUES (?, TRUE, ?)", [organizationId, now]);
    await conn.query("INSERT IGNORE INTO members (organization_id, user_id, role, update_time) VALUES (?, ?, 4, ?)", [
      organizationId,
      userId,
      now,
    ]);
    await conn.query("INSERT INTO audit_events SET ?", [auditRow(organizationId, userId, "key.create", id, "{}", now)]);
    await conn.commit();
    return id;
  } finally {
    conn.release();
  }
}

/** `concurrency` writers in a closed loop for warmupS (not counted), then durationS; creators take turns. */
export async function rawInserts(
  pool: Pool,
  options: { concurrency: number; durationS: number; warmupS: number; pepper: string; organizationId: string; creators: string[] },
): Promise<RawResult> {
  const hasher = new SecretHasher(options.pepper);
  const latencies = new Samples();
  const start = performance.now();
  const measureFrom = start + options.warmupS * 1000;
  const end = measureFrom + options.durationS * 1000;
  let next = 0;
  const writer = async () => {
    for (let t = performance.now(); t < end; t = performance.now()) {
      await insertOne(pool, hasher, options.organizationId, options.creators[next++ % options.creators.length]);
      if (t >= measureFrom) latencies.add(performance.now() - t);
    }
  };
  await Promise.all(Array.from({ length: options.concurrency }, writer));
  const seconds = (performance.now() - measureFrom) / 1000;
  return {
    requests: latencies.size,
    warmupRequests: next - latencies.size,
    rps: latencies.size / seconds,
    p50Ms: latencies.percentile(50),
    p99Ms: latencies.percentile(99),
  };
}

/**
 * The floor of RevokeKey's latency on this database: revokes `count` keys of
 * its own (inserted first, as above), one at a time, each in a single round
 * trip holding what the service's transaction writes (the UPDATE, the audit
 * row, COMMIT; `pool` needs multipleStatements). The service sends these
 * with a read-back of the key in its one round trip, and broadcasts after.
 * Latencies in ms, and the seconds they took in all.
 */
export async function rawRevokes(
  pool: Pool,
  options: { count: number; pepper: string; organizationId: string; userId: string },
): Promise<{ latencies: Samples; seconds: number }> {
  const hasher = new SecretHasher(options.pepper);
  const ids: string[] = [];
  for (let i = 0; i < options.count; i++) ids.push(await insertOne(pool, hasher, options.organizationId, options.userId));
  const latencies = new Samples();
  const start = performance.now();
  for (const id of ids) {
    const now = new Date();
    const started = performance.now();
    await pool.query(
      `START TRANSACTION;
       UPDATE api_keys SET revoke_time = ?, revoked_by = ?, revoke_reason = ?, update_time = ? WHERE organization_id = ? AND id = ?;
       INSERT INTO audit_events SET ?;
       COMMIT`,
      [
        now,
        options.userId,
        "bench",
        now,
        options.organizationId,
        id,
        auditRow(options.organizationId, options.userId, "key.revoke", id, '{"reason":"bench"}', now),
      ],
    );
    latencies.add(performance.now() - started);
  }
  return { latencies, seconds: (performance.now() - start) / 1000 };
}
