// Key datasets for the cold-lookup and memory scenarios: N keys written
// straight into the service's schema with multi-row INSERTs (CreateKey one by
// one would take hours for a million). One database per size, so that "10k
// keys in MySQL" means exactly that on every run; each is kept and reused
// while its counts match, since loading a million keys takes minutes.
// Only hashes go into the service's tables; the secrets are kept in a table of
// the bench's own (bench_secrets) so that later runs can present them.
import { randomInt } from "node:crypto";
import mysql from "mysql2/promise";
import type { Pool, RowDataPacket } from "mysql2/promise";
import { Role } from "../gen/apikeys/v1/apikeys_pb.js";
import { SecretHasher } from "../src/keys/hashing.js";
import { generateSecret, newKeyId, previewOf } from "../src/keys/key-format.js";
import { migrationsDirectory, runMigrations } from "../src/store/migrate.js";
import { nextPosition } from "../src/store/positions.js";
import { readdirSync } from "node:fs";

/** Rows per INSERT: ~0.5 MB statements, far below max_allowed_packet. */
const BATCH = 2000;
/** Batches written at once: enough to keep InnoDB busy while the next is generated. */
const WRITERS = 3;
/** Keys per organization (every organization has one member, the keys' creator). */
const KEYS_PER_ORG = 100;
export const DATASET_SCOPES = ["documents:read"];

export interface Dataset {
  readonly size: number;
  /** mysql://…/apikeys_bench_<size>_s<schema version>, for the service's MYSQL_URL. */
  readonly url: string;
  /** `count` secrets of distinct keys picked at random (all of them, in order, when count ≥ size). */
  secrets(count: number): Promise<string[]>;
  close(): Promise<void>;
}

/** The number of the newest migration, e.g. 3. */
function schemaVersion(): number {
  return Math.max(...readdirSync(migrationsDirectory()).map((f) => Number.parseInt(f, 10)).filter((n) => Number.isFinite(n)));
}

export function sizeLabel(size: number): string {
  if (size >= 1_000_000 && size % 1_000_000 === 0) return `${size / 1_000_000}m`;
  if (size >= 1000 && size % 1000 === 0) return `${size / 1000}k`;
  return String(size);
}

/** Opens the dataset of `size` keys, loading it first if it is missing or incomplete. */
export async function openDataset(serverUrl: string, size: number, pepper: string, log: (line: string) => void): Promise<Dataset> {
  // Named for the schema version too: a bench run of another checkout (the server is shared) never
  // migrates a dataset under the feet of one on an older schema.
  const url = `${serverUrl.replace(/\/+$/, "")}/apikeys_bench_${sizeLabel(size)}_s${schemaVersion()}`;
  await runMigrations(url, 5000);
  const pool = mysql.createPool({ uri: url, connectionLimit: WRITERS, timezone: "Z", charset: "UTF8MB4_BIN" });
  try {
    await pool.query(
      `CREATE TABLE IF NOT EXISTS bench_secrets (
         seq    INT UNSIGNED NOT NULL PRIMARY KEY,
         secret VARCHAR(64)  NOT NULL
       ) ENGINE = InnoDB`,
    );
    const hasher = new SecretHasher(pepper);
    const loaded = await loadedKeys(pool, hasher);
    if (loaded !== size) {
      const started = performance.now();
      log(`loading ${size} keys into ${new URL(url).pathname.slice(1)} (${loaded < 0 ? "unusable keys" : loaded} there)…`);
      await load(pool, size, loaded, hasher);
      log(`  loaded in ${((performance.now() - started) / 1000).toFixed(1)} s`);
    }
  } catch (err) {
    await pool.end();
    throw err;
  }
  return {
    size,
    url,
    secrets: (count) => pickSecrets(pool, size, count),
    close: () => pool.end(),
  };
}

/**
 * How many complete keys the dataset holds; -1 when its tables disagree (an
 * interrupted load) or its hashes were made with another pepper.
 */
async function loadedKeys(pool: Pool, hasher: SecretHasher): Promise<number> {
  const [rows] = await pool.query<RowDataPacket[]>(
    `SELECT (SELECT COUNT(*) FROM api_keys) AS keys_, (SELECT COUNT(*) FROM key_secrets) AS hashes,
            (SELECT COUNT(*) FROM bench_secrets) AS secrets, (SELECT COALESCE(MAX(seq), 0) FROM bench_secrets) AS last,
            (SELECT secret FROM bench_secrets WHERE seq = 1) AS first_secret`,
  );
  const { keys_, hashes, secrets, last, first_secret: firstSecret } = rows[0];
  const n = Number(secrets);
  if (Number(keys_) !== n || Number(hashes) !== n || Number(last) !== n) return -1;
  if (n === 0) return 0;
  const [found] = await pool.query<RowDataPacket[]>("SELECT 1 FROM key_secrets WHERE hash = ?", [hasher.hash(firstSecret as string)]);
  return found.length === 1 ? n : -1;
}

async function load(pool: Pool, size: number, loaded: number, hasher: SecretHasher): Promise<void> {
  // Anything but a complete smaller dataset starts again from nothing.
  let from = loaded;
  if (from < 0 || from > size) {
    for (const table of ["api_keys", "key_secrets", "key_lookup", "members", "organizations", "bench_secrets"]) await pool.query(`TRUNCATE TABLE ${table}`);
    from = 0;
  }
  const orgs = Math.ceil(size / KEYS_PER_ORG);
  const now = new Date();
  for (let first = 0; first < orgs; first += BATCH) {
    const ids = Array.from({ length: Math.min(BATCH, orgs - first) }, (_, i) => first + i);
    await pool.query("INSERT IGNORE INTO organizations (id, api_access_enabled, update_time) VALUES ?", [
      ids.map((i) => [`org_${i}`, true, now]),
    ]);
    await pool.query("INSERT IGNORE INTO members (organization_id, user_id, role, update_time) VALUES ?", [
      ids.map((i) => [`org_${i}`, `user_${i}`, Role.ADMIN, now]),
    ]);
  }
  const writing = new Set<Promise<void>>();
  for (let seq = from + 1; seq <= size; seq += BATCH) {
    const write = writeBatch(pool, seq, Math.min(BATCH, size - seq + 1), orgs, hasher, now).finally(() => writing.delete(write));
    writing.add(write);
    if (writing.size >= WRITERS) await Promise.race(writing);
  }
  await Promise.all(writing);
}

/** Keys seq … seq+count-1, each with its hash and secret, in one transaction so that counts always agree. */
async function writeBatch(pool: Pool, seq: number, count: number, orgs: number, hasher: SecretHasher, now: Date): Promise<void> {
  const keys: unknown[][] = [];
  const hashes: unknown[][] = [];
  const lookups: unknown[][] = [];
  const secrets: unknown[][] = [];
  const scopes = JSON.stringify(DATASET_SCOPES);
  for (let i = 0; i < count; i++) {
    const org = (seq + i - 1) % orgs;
    const secret = generateSecret("sk");
    const id = newKeyId();
    const hash = hasher.hash(secret);
    keys.push([nextPosition(), id, `org_${org}`, `bench key ${seq + i}`, "sk", previewOf(secret), scopes, `user_${org}`, now, now, "{}"]);
    hashes.push([`org_${org}`, hash, id]);
    lookups.push([hash, `org_${org}`, id]);
    secrets.push([seq + i, secret]);
  }
  const conn = await pool.getConnection();
  try {
    await conn.beginTransaction();
    await conn.query(
      "INSERT INTO api_keys (seq, id, organization_id, name, prefix, preview, scopes, created_by, create_time, update_time, metadata) VALUES ?",
      [keys],
    );
    await conn.query("INSERT INTO key_secrets (organization_id, hash, key_id) VALUES ?", [hashes]);
    await conn.query("INSERT INTO key_lookup (hash, organization_id, key_id) VALUES ?", [lookups]);
    await conn.query("INSERT INTO bench_secrets (seq, secret) VALUES ?", [secrets]);
    await conn.commit();
  } catch (err) {
    await conn.rollback();
    throw err;
  } finally {
    conn.release();
  }
}

async function pickSecrets(pool: Pool, size: number, count: number): Promise<string[]> {
  if (count >= size) {
    const [rows] = await pool.query<RowDataPacket[]>("SELECT secret FROM bench_secrets ORDER BY seq");
    return rows.map((r) => r.secret as string);
  }
  const seqs = new Set<number>();
  while (seqs.size < count) seqs.add(randomInt(1, size + 1));
  const all = [...seqs];
  const secrets: string[] = [];
  for (let i = 0; i < all.length; i += 10_000) {
    const [rows] = await pool.query<RowDataPacket[]>("SELECT secret FROM bench_secrets WHERE seq IN (?)", [all.slice(i, i + 10_000)]);
    for (const r of rows) secrets.push(r.secret as string);
  }
  // Rows come back in seq order, which is also the order of api_keys' clustered index: shuffle, or
  // consecutive lookups would read neighbouring rows.
  for (let i = secrets.length - 1; i > 0; i--) {
    const j = randomInt(i + 1);
    [secrets[i], secrets[j]] = [secrets[j], secrets[i]];
  }
  return secrets;
}

/** InnoDB buffer pool the key tables need, per million keys (docs/operating.md, Sizing: about 0.6 GB; rounded up). */
const BUFFER_POOL_PER_MILLION = 768 * 1024 * 1024;

/**
 * Gives the server a buffer pool that holds the key tables of `keys` keys, as
 * the Sizing section of docs/operating.md tells operators to: the cold scenario measures
 * the service's lookups, not a database too small for its data. Returns how to
 * put the previous size back, or null when it was already large enough.
 * MariaDB and MySQL resize the pool online (SET GLOBAL); the change is
 * reported in the run's results.
 */
export async function ensureBufferPool(
  serverUrl: string,
  keys: number,
  log: (line: string) => void,
): Promise<{ previousBytes: number; bytes: number; restore(): Promise<void> } | null> {
  // In whole 128 MB chunks (MariaDB's unit), for the keys it has to hold: the default 128 MB holds 100k.
  const chunk = 128 * 1024 * 1024;
  const wanted = Math.ceil((keys * BUFFER_POOL_PER_MILLION) / 1_000_000 / chunk) * chunk;
  const conn = await mysql.createConnection(serverUrl);
  try {
    const previousBytes = await poolSize(conn);
    if (previousBytes >= wanted) return null;
    log(`raising innodb_buffer_pool_size from ${previousBytes >> 20} MB to ${wanted >> 20} MB for the cold scenario (docs/operating.md: Sizing)…`);
    await resizePool(conn, wanted);
    return {
      previousBytes,
      bytes: await poolSize(conn),
      async restore() {
        const again = await mysql.createConnection(serverUrl);
        try {
          await resizePool(again, previousBytes);
        } finally {
          await again.end();
        }
      },
    };
  } finally {
    await conn.end();
  }
}

async function poolSize(conn: mysql.Connection): Promise<number> {
  const [rows] = await conn.query<RowDataPacket[]>("SELECT @@GLOBAL.innodb_buffer_pool_size AS size");
  return Number(rows[0].size);
}

/** SET GLOBAL returns before the resize is done: waits until the server reports it finished. */
async function resizePool(conn: mysql.Connection, bytes: number): Promise<void> {
  await conn.query("SET GLOBAL innodb_buffer_pool_size = ?", [bytes]);
  const deadline = Date.now() + 120_000;
  for (;;) {
    const [rows] = await conn.query<RowDataPacket[]>("SHOW GLOBAL STATUS LIKE 'Innodb_buffer_pool_resize_status'");
    const status = String(rows[0]?.Value ?? "");
    // MariaDB: empty or "Completed resizing buffer pool at …"; MySQL: "Completed resizing …" too.
    if (status === "" || /^Completed|^Size did not change/i.test(status)) return;
    if (Date.now() > deadline) throw new Error(`innodb_buffer_pool_size did not finish resizing in 2 min: ${status}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}
