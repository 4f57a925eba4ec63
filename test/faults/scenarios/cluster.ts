// The revocation guarantee on a real Redis Cluster (issue 19): three masters
// with a replica each (test/helpers/redis-cluster.ts), three instances sharing
// one database, each given a different master as its only seed node. What
// must hold, as on a standalone Redis:
// - revocations raced by verifications on every instance: zero acceptances of
//   a verification that started after its RevokeKey returned (PUBLISH on a
//   cluster counts only the receiving node's subscribers: waiting for that
//   many acks is not waiting for every instance);
// - a master killed mid-traffic and its replica promoted: RevokeKey may answer
//   UNAVAILABLE meanwhile (the caller retries), but once it answered OK no
//   instance accepts the key. The master killed is the one serving the
//   broadcast's channels (hash tag {apikeys}); the others lose nothing the
//   broadcast needs. (Usage limits and credits across instances and through a
//   failover: test/integration/usage-limits-cluster.test.ts.)
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type TestDatabase, freshDatabase } from "../../helpers/mysql.js";
import { TestRedisCluster } from "../../helpers/redis-cluster.js";
import { type TestServer, startServer } from "../../helpers/server.js";
import { owner, sleep, until } from "../support/load.js";
import { type RaceKey, type RaceResult, raceRevocations, raceTarget } from "../support/race.js";

export interface ClusterOptions {
  /** Keys revoked in the race. */
  keys: number;
  /** Keys revoked through a master failover (enough that the race outlasts it); 0: no failover, no replicas. */
  failoverKeys: number;
  revokers: number;
  verifiers: number;
  timeoutMs: number;
}

const ORG = "org_cluster_race";
/** One instance slow to read its subscription, so that returning before its ack would be caught there. */
const SLOW_READER_MS = 20;
/**
 * Keys loaded into each cache at a time: each load takes a pooled MySQL connection, and the shared MariaDB's
 * connections are everyone's (several instances × a full pool each hit its limit of 151).
 */
const WARM_BATCH = 5;

export function clusterSuite(o: ClusterOptions): void {
  const replicas = o.failoverKeys > 0 ? 1 : 0;
  describe(`revocation on a Redis Cluster (3 masters, ${replicas * 3} replicas), each instance seeded with a different master`, () => {
    let db: TestDatabase;
    let cluster: TestRedisCluster;
    const servers: TestServer[] = [];
    const targets = () => servers.map((s, i) => raceTarget(`instance ${i} (seed ${s.app.config.redis.nodes[0].port})`, s.grpcTransportClient));

    beforeAll(async () => {
      [db, cluster] = await Promise.all([freshDatabase(), TestRedisCluster.start({ replicas })]);
      const masters = await cluster.masters();
      for (const [i, port] of masters.entries()) {
        const env = { REDIS_CLUSTER_NODES: `127.0.0.1:${port}`, CACHE_LEASE_MS: "1000" };
        servers.push(await startServer({ databaseUrl: db.url, env, broadcastDeliveryDelayMs: i === masters.length - 1 ? SLOW_READER_MS : 0 }));
      }
      await until("every instance trusts its cache", () => servers.every((s) => s.app.cache!.isTrusted()), 15_000);
    }, 120_000);

    afterAll(async () => {
      await Promise.all(servers.map((s) => s.stop()));
      await cluster?.stop();
      await db?.drop();
    });

    /** Keys cached on every instance. */
    const cachedKeys = async (n: number): Promise<RaceKey[]> => {
      const keys: RaceKey[] = [];
      while (keys.length < n) {
        const batch = await Promise.all(
          Array.from({ length: Math.min(10, n - keys.length) }, () =>
            servers[0].grpcTransportClient.createKey({ organizationId: ORG, actor: owner, name: "cluster race" }),
          ),
        );
        keys.push(...batch.map((r) => ({ id: r.key!.id, secret: r.secret })));
      }
      for (const s of servers) {
        for (let i = 0; i < keys.length; i += WARM_BATCH) {
          const answers = await Promise.all(keys.slice(i, i + WARM_BATCH).map((k) => s.grpcTransportClient.verifyKey({ key: k.secret })));
          expect(answers.every((a) => a.valid)).toBe(true);
        }
      }
      return keys;
    };

    const summary = (what: string, r: RaceResult) => {
      const sorted = [...r.revokeMs].sort((a, b) => a - b);
      const p = (q: number) => sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)]?.toFixed(1);
      console.log(
        `[cluster] ${what}: ${r.revoked} revocations (RevokeKey p50 ${p(0.5)} ms, p99 ${p(0.99)} ms, ${r.retried} retried after UNAVAILABLE); ` +
          `${r.checkedAfter} verifications started after RevokeKey returned, ${r.acceptedBefore} accepted while in flight`,
      );
    };

    it(
      "revocations raced by verifications on every instance: zero acceptances after RevokeKey returned",
      async () => {
        const keys = await cachedKeys(o.keys);
        const result = await raceRevocations({ organizationId: ORG, targets: targets(), keys, revokers: o.revokers, verifiers: o.verifiers });
        summary("race", result);
        expect(result.errors).toEqual([]);
        expect(result.lateAcceptances).toEqual([]);
        expect(result.revoked).toBe(o.keys);
        expect(result.checkedAfter).toBeGreaterThanOrEqual(o.keys * servers.length);
      },
      o.timeoutMs,
    );

    it.runIf(o.failoverKeys > 0)(
      "the broadcast's master killed mid-traffic, its replica promoted: no key accepted after its RevokeKey answered OK",
      async () => {
        const keys = await cachedKeys(o.failoverKeys);
        const master = await cluster.masterFor("{apikeys}");
        const race = raceRevocations({
          organizationId: ORG,
          targets: targets(),
          keys,
          revokers: o.revokers,
          verifiers: o.verifiers,
          retryUnavailable: true,
        });
        await sleep(500);
        const { promoted, tookMs } = await cluster.failover(master);
        const failedOverAt = performance.now();
        const result = await race;
        summary(`failover (${master} killed, ${promoted} promoted in ${tookMs} ms)`, result);
        // Otherwise the race did not straddle the failover, and proved nothing about it.
        expect(result.endedAt, "the race ended before the failover did: give it more keys").toBeGreaterThan(failedOverAt);
        expect(result.errors).toEqual([]);
        expect(result.lateAcceptances).toEqual([]);
        expect(result.revoked).toBe(o.failoverKeys);
        // And once the dust settled, every instance rejects every key.
        for (const t of targets()) for (const k of keys) expect((await t.verify(k.secret)).valid).toBe(false);
      },
      o.timeoutMs,
    );
  });
}
