// Loads many keys straight into a migrated schema (src/store/migrations) with
// multi-row INSERTs: creating a million keys through the API would take an
// hour. The rows are what CreateKey writes (key, current secret hashed with
// the service's hasher, organization, creator's membership), minus the audit
// events, which no scale measurement reads.
import mysql from "mysql2/promise";
import { Role } from "../../../gen/apikeys/v1/apikeys_pb.js";
import type { SecretHasher } from "../../../src/keys/hashing.js";
import { generateSecret, newKeyId, previewOf } from "../../../src/keys/key-format.js";
import { nextPosition } from "../../../src/store/positions.js";

/** Rows per INSERT: about 1 MB of SQL, well under max_allowed_packet. */
const CHUNK = 2500;
/** Connections inserting at once: the server parses and indexes one chunk while the next is built. */
const LANES = 2;

export interface BulkOrganization {
  id: string;
  keys: number;
  /** Keys are spread round-robin over users u_0 … u_<creators-1>, all owners. */
  creators: number;
}

export interface SampleKey {
  id: string;
  organizationId: string;
  createdBy: string;
  secret: string;
}

/**
 * Inserts the organizations' keys, in about the order given (newest last),
 * and returns every `sampleEvery`-th key with its secret (the rest are not kept).
 */
export async function bulkLoadKeys(
  url: string,
  hasher: SecretHasher,
  organizations: readonly BulkOrganization[],
  sampleEvery: number,
): Promise<SampleKey[]> {
  const conns = await Promise.all(
    Array.from({ length: LANES }, () => mysql.createConnection({ uri: url, timezone: "Z", charset: "UTF8MB4_BIN" })),
  );
  const samples: SampleKey[] = [];
  const start = Date.now();
  try {
    const created = new Date(start);
    await conns[0].query("INSERT INTO organizations (id, api_access_enabled, update_time) VALUES ?", [
      organizations.map((org) => [org.id, true, created]),
    ]);
    for (const org of organizations) {
      const members = Array.from({ length: org.creators }, (_, u) => [org.id, `u_${u}`, Role.OWNER, created]);
      await conns[0].query("INSERT INTO members (organization_id, user_id, role, update_time) VALUES ?", [members]);
    }
    // Chunks in order; each lane takes the next one. Rows are built while the other lane's INSERT runs.
    const chunks = organizations.flatMap((org) =>
      Array.from({ length: Math.ceil(org.keys / CHUNK) }, (_, c) => ({ org, from: c * CHUNK, to: Math.min(org.keys, (c + 1) * CHUNK) })),
    );
    let next = 0;
    let n = 0;
    await Promise.all(
      conns.map(async (conn) => {
        while (next < chunks.length) {
          const { org, from, to } = chunks[next++];
          const keys: unknown[][] = [];
          const secrets: unknown[][] = [];
          const lookups: unknown[][] = [];
          for (let i = from; i < to; i++, n++) {
            const id = newKeyId();
            const secret = generateSecret("sk");
            const createdBy = `u_${i % org.creators}`;
            const time = new Date(start + n);
            const hash = hasher.hash(secret);
            keys.push([nextPosition(), id, org.id, `bulk ${n}`, "sk", previewOf(secret), "[]", createdBy, time, time, "{}"]);
            secrets.push([org.id, hash, id]);
            lookups.push([hash, org.id, id]);
            if (n % sampleEvery === 0) samples.push({ id, organizationId: org.id, createdBy, secret });
          }
          await conn.query(
            "INSERT INTO api_keys (seq, id, organization_id, name, prefix, preview, scopes, created_by, create_time, update_time, metadata) VALUES ?",
            [keys],
          );
          await conn.query("INSERT INTO key_secrets (organization_id, hash, key_id) VALUES ?", [secrets]);
          await conn.query("INSERT INTO key_lookup (hash, organization_id, key_id) VALUES ?", [lookups]);
        }
      }),
    );
    return samples;
  } finally {
    await Promise.all(conns.map((c) => c.end()));
  }
}
