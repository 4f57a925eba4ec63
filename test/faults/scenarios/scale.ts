// Scale: many keys in MySQL (bulk-loaded straight into the schema), then the
// operations users wait on — verify, get, list (first and last pages through
// page tokens), revoke — must take the same time as on a small table, and
// re-running the migrations on the large table must be a fast no-op.
//
// "The same time": each operation runs alternately against the large database
// and a small reference one (two servers side by side), so that whatever else
// the machine is doing slows both alike; the large side's median must stay
// within a small factor of the reference's. An operation that scanned instead
// of seeking would be hundreds of times slower at a million keys.
import mysql from "mysql2/promise";
import type { RowDataPacket } from "mysql2/promise";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { KeyState, Role, VerifyCode } from "../../../gen/apikeys/v1/apikeys_pb.js";
import { SecretHasher } from "../../../src/keys/hashing.js";
import { FIND_BY_HASH_SQL, LOOKUP_HASH_SQL, MySqlStore } from "../../../src/store/mysql-store.js";
import { type TestDatabase, freshDatabase } from "../../helpers/mysql.js";
import { TestRedis } from "../../helpers/redis.js";
import { TEST_PEPPER, type TestServer, startServer } from "../../helpers/server.js";
import { type BulkOrganization, type SampleKey, bulkLoadKeys } from "../support/bulk-keys.js";
import { Latencies } from "../support/load.js";

export interface ScaleOptions {
  keys: number;
  /** Keys verified, fetched and (a quarter of them) revoked on each side, spread evenly over the table. */
  samples: number;
  timeoutMs: number;
}

/** Keys in the reference database: enough for two full pages in its big organization. */
const REFERENCE_KEYS = 5000;
/** The large side's median may be this many times the reference's, plus SLACK_MS (cold pages are read from disk). */
const FACTOR = 3;
const SLACK_MS = 5;
const MIGRATE_BUDGET_MS = 1000;

const BIG_ORG = "org_big";
/** The big organization holds this share of all keys (and is paged through end to end). */
const BIG_SHARE = 0.4;
const ORG_SIZE = 1000;
const owner = { userId: "u_0", role: Role.OWNER };

interface Side {
  db: TestDatabase;
  server: TestServer;
  samples: SampleKey[];
  /** Keys in the big organization. */
  big: number;
}

/** A database of `keys` keys, migrated and bulk-loaded, and a server on it. */
async function loadSide(keys: number, samples: number, redisUrl: string): Promise<Side> {
  const db = await freshDatabase();
  const store = await MySqlStore.open(db.url);
  await store.migrate();
  await store.close();
  const big = Math.round(keys * BIG_SHARE);
  const organizations: BulkOrganization[] = [{ id: BIG_ORG, keys: big, creators: 100 }];
  for (let left = keys - big, i = 0; left > 0; left -= ORG_SIZE, i++) {
    organizations.push({ id: `org_${i}`, keys: Math.min(ORG_SIZE, left), creators: 10 });
  }
  const started = Date.now();
  const sampled = await bulkLoadKeys(db.url, new SecretHasher(TEST_PEPPER), organizations, Math.floor(keys / samples));
  console.log(`[scale] bulk-loaded ${keys} keys in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  // Starting migrates again, on the loaded tables.
  const server = await startServer({ databaseUrl: db.url, env: { REDIS_URL: redisUrl } });
  return { db, server, samples: sampled.slice(0, samples), big };
}

export function scaleSuite(o: ScaleOptions): void {
  describe(`scale: ${o.keys.toLocaleString("en")} keys in MySQL`, () => {
    let redis: TestRedis;
    let large: Side;
    let reference: Side;

    beforeAll(async () => {
      redis = await TestRedis.start();
      large = await loadSide(o.keys, o.samples, redis.url);
      reference = await loadSide(REFERENCE_KEYS, o.samples, redis.url);
    }, o.timeoutMs);

    afterAll(async () => {
      for (const side of [large, reference]) {
        await side?.server.stop();
        await side?.db.drop();
      }
      await redis?.kill();
    }, o.timeoutMs);

    it(
      "verify, get, list (first and last pages) and revoke take as long as on a small table; re-migrating is a fast no-op",
      async () => {
        const results: { large: Latencies; reference: Latencies }[] = [];
        /** Runs `call` n times on each side, alternately. */
        const compare = async (name: string, n: number, call: (side: Side, i: number) => Promise<unknown>) => {
          const pair = { large: new Latencies(`${name}, ${o.keys} keys`), reference: new Latencies(`${name}, ${REFERENCE_KEYS} keys`) };
          results.push(pair);
          for (let i = 0; i < n; i++) {
            await pair.large.time(() => call(large, i));
            await pair.reference.time(() => call(reference, i));
          }
          return pair;
        };

        // VerifyKey's two queries seek by primary and unique keys: no table is scanned.
        const conn = await mysql.createConnection(large.db.url);
        try {
          const hash = new SecretHasher(TEST_PEPPER).hash(large.samples[0].secret);
          const [lookup] = await conn.query<RowDataPacket[]>(`EXPLAIN ${LOOKUP_HASH_SQL}`, [hash]);
          const [plan] = await conn.query<RowDataPacket[]>(`EXPLAIN ${FIND_BY_HASH_SQL}`, [large.samples[0].organizationId, hash]);
          expect([...lookup, ...plan].filter((step) => !["const", "eq_ref", "system"].includes(step.type as string))).toEqual([]);
        } finally {
          await conn.end();
        }

        const verify = async (side: Side, i: number) => {
          const res = await side.server.grpcTransportClient.verifyKey({ key: side.samples[i].secret });
          expect(res.valid).toBe(true);
        };
        await compare("VerifyKey from MySQL", o.samples, verify);
        await compare("VerifyKey cached", o.samples, verify);
        await compare("GetKey", o.samples, async (side, i) => {
          const key = side.samples[i];
          const res = await side.server.grpcTransportClient.getKey({ organizationId: key.organizationId, keyId: key.id, actor: owner });
          expect(res.key!.id).toBe(key.id);
        });
        await compare("ListKeys first page of 50", 50, (side) =>
          side.server.grpcTransportClient.listKeys({ organizationId: BIG_ORG, actor: owner }),
        );
        await compare("ListKeys by creator, first page of 50", 50, (side, i) =>
          side.server.grpcTransportClient.listKeys({ organizationId: BIG_ORG, actor: owner, createdBy: `u_${i % 100}` }),
        );

        // Every page of each big organization through the page tokens: each key exactly once.
        const lastPageToken = new Map<Side, string>();
        for (const side of [large, reference]) {
          const seen = new Set<string>();
          let pageToken = "";
          do {
            const page = await side.server.grpcTransportClient.listKeys({ organizationId: BIG_ORG, actor: owner, pageSize: 1000, pageToken });
            for (const k of page.keys) seen.add(k.id);
            if (page.nextPageToken === "") lastPageToken.set(side, pageToken);
            pageToken = page.nextPageToken;
          } while (pageToken !== "");
          expect(seen.size, "every key of the organization exactly once").toBe(side.big);
        }
        const pageOf = (pageToken: (side: Side) => string) => async (side: Side) => {
          const page = await side.server.grpcTransportClient.listKeys({
            organizationId: BIG_ORG,
            actor: owner,
            pageSize: 1000,
            pageToken: pageToken(side),
          });
          expect(page.keys.length).toBeGreaterThan(0);
        };
        await compare("ListKeys first page of 1000", 10, pageOf(() => ""));
        await compare("ListKeys last page", 10, pageOf((side) => lastPageToken.get(side)!));

        const revoked = (side: Side) => side.samples.filter((_, i) => i % 4 === 0);
        await compare("RevokeKey", Math.ceil(o.samples / 4), async (side, i) => {
          const key = revoked(side)[i];
          const res = await side.server.grpcTransportClient.revokeKey({ organizationId: key.organizationId, keyId: key.id, actor: owner });
          expect(res.key!.state).toBe(KeyState.REVOKED);
        });
        for (const key of revoked(large)) {
          expect((await large.server.grpcTransportClient.verifyKey({ key: key.secret })).code).toBe(VerifyCode.REVOKED);
        }

        const [versions, count] = await Promise.all([migrationVersions(large.db.url), keyCount(large.db.url)]);
        expect(count).toBe(o.keys);
        const started = performance.now();
        await large.server.app.store.migrate();
        const migrateMs = performance.now() - started;
        expect(await migrationVersions(large.db.url)).toEqual(versions);
        expect(await keyCount(large.db.url)).toBe(count);

        for (const { large: l, reference: r } of results) console.log(`[scale] ${l}\n[scale] ${r}`);
        console.log(`[scale] migrate() again on ${count} keys: ${migrateMs.toFixed(1)} ms`);
        const slower = results
          .filter(({ large: l, reference: r }) => l.quantile(0.5) > FACTOR * r.quantile(0.5) + SLACK_MS)
          .map(({ large: l, reference: r }) => `${l.name}: p50 ${l.quantile(0.5).toFixed(1)} ms vs ${r.quantile(0.5).toFixed(1)} ms`);
        expect(slower).toEqual([]);
        expect(migrateMs).toBeLessThan(MIGRATE_BUDGET_MS);
      },
      o.timeoutMs,
    );
  });
}

async function migrationVersions(url: string): Promise<string[]> {
  const conn = await mysql.createConnection(url);
  try {
    const [rows] = await conn.query<RowDataPacket[]>("SELECT version, apply_time FROM schema_migrations ORDER BY version");
    return rows.map((r) => `${r.version as string}@${(r.apply_time as Date).toISOString()}`);
  } finally {
    await conn.end();
  }
}

async function keyCount(url: string): Promise<number> {
  const conn = await mysql.createConnection(url);
  try {
    const [rows] = await conn.query<RowDataPacket[]>("SELECT COUNT(*) AS n FROM api_keys");
    return Number(rows[0].n);
  } finally {
    await conn.end();
  }
}
