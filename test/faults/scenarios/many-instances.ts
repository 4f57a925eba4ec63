// Many instances on one machine (issue 19: "the guarantee and its cost with 10
// instances, not only 3"): every instance shares one database and one Redis
// and caches every key; revocations through random instances are raced by
// verifications on all of them. Zero acceptances of a verification that
// started after its RevokeKey returned.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type TestDatabase, freshDatabase } from "../../helpers/mysql.js";
import { TestRedis } from "../../helpers/redis.js";
import { type TestServer, startServer } from "../../helpers/server.js";
import { owner, until } from "../support/load.js";
import { type RaceKey, raceRevocations, raceTarget } from "../support/race.js";

export interface ManyInstancesOptions {
  instances: number;
  /** Keys revoked in the race (each cached on every instance first). */
  keys: number;
  revokers: number;
  verifiers: number;
  timeoutMs: number;
}

const ORG = "org_many";
const SLOW_READER_MS = 20;
/**
 * Keys loaded into each cache at a time: each load takes a pooled MySQL connection, and the shared MariaDB's
 * connections are everyone's (several instances × a full pool each hit its limit of 151).
 */
const WARM_BATCH = 5;

export function manyInstancesSuite(o: ManyInstancesOptions): void {
  describe(`${o.instances} instances on one Redis: revocations raced by verifications everywhere`, () => {
    let db: TestDatabase;
    let redis: TestRedis;
    const servers: TestServer[] = [];

    beforeAll(async () => {
      [db, redis] = await Promise.all([freshDatabase(), TestRedis.start()]);
      // Pools open connections on demand: with keys cached, ten instances hold few of the shared MariaDB's.
      const env = { REDIS_URL: redis.url, CACHE_LEASE_MS: "1000" };
      servers.push(await startServer({ databaseUrl: db.url, env })); // the first one migrates
      // Two of them slow to read their subscription: a revocation that returned before every instance had
      // applied it would be caught there (in-process, the others apply it before the next call reaches them).
      while (servers.length < o.instances) {
        const slow = servers.length >= o.instances - 2;
        servers.push(await startServer({ databaseUrl: db.url, env, broadcastDeliveryDelayMs: slow ? SLOW_READER_MS : 0 }));
      }
      await until("every instance trusts its cache", () => servers.every((s) => s.app.cache!.isTrusted()), 15_000);
    }, 120_000);

    afterAll(async () => {
      await Promise.all(servers.map((s) => s.stop()));
      await redis?.kill();
      await db?.drop();
    });

    it(
      "zero acceptances of a verification that started after RevokeKey returned",
      async () => {
        const keys: RaceKey[] = [];
        while (keys.length < o.keys) {
          const batch = await Promise.all(
            Array.from({ length: Math.min(10, o.keys - keys.length) }, () =>
              servers[0].grpcTransportClient.createKey({ organizationId: ORG, actor: owner, name: "race" }),
            ),
          );
          keys.push(...batch.map((r) => ({ id: r.key!.id, secret: r.secret })));
        }
        // Every key in every cache: a missed invalidation anywhere would answer VALID.
        for (const s of servers) {
          for (let i = 0; i < keys.length; i += WARM_BATCH) {
            const answers = await Promise.all(keys.slice(i, i + WARM_BATCH).map((k) => s.grpcTransportClient.verifyKey({ key: k.secret })));
            expect(answers.every((a) => a.valid)).toBe(true);
          }
        }
        const hits = servers.map((s) => s.app.cache!.hits);
        const result = await raceRevocations({
          organizationId: ORG,
          targets: servers.map((s, i) => raceTarget(`instance ${i}`, s.grpcTransportClient)),
          keys,
          revokers: o.revokers,
          verifiers: o.verifiers,
        });
        const sum = (f: (stats: NonNullable<TestServer["app"]["broadcast"]>["stats"]) => number) =>
          servers.reduce((n, s) => n + f(s.app.broadcast!.stats), 0);
        const sorted = [...result.revokeMs].sort((a, b) => a - b);
        const p = (q: number) => sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)].toFixed(1);
        console.log(
          `[many instances] ${o.instances} instances, ${result.revoked} revocations (RevokeKey p50 ${p(0.5)} ms, p99 ${p(0.99)} ms, ` +
            `max ${p(1)} ms); ${result.checkedAfter} verifications started after RevokeKey returned, ` +
            `${result.acceptedBefore} accepted while their revocation was in flight; ` +
            `acks timed out ${sum((s) => s.acksTimedOut)}, subscriptions lost ${sum((s) => s.lost)}, messages rejected ${sum((s) => s.rejected)}`,
        );
        expect(result.errors).toEqual([]);
        expect(result.lateAcceptances).toEqual([]);
        expect(result.revoked).toBe(o.keys);
        expect(result.checkedAfter).toBeGreaterThanOrEqual(o.keys * o.instances);
        // The caches were in use during the race (otherwise every answer came from MySQL and proved nothing).
        expect(servers.every((s, i) => s.app.cache!.hits > hits[i])).toBe(true);
      },
      o.timeoutMs,
    );
  });
}
