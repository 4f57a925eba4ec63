// Redis killed (kill -9) and restarted under verification load, with several
// instances sharing one database and one Redis. What docs/reliability.md promises:
// - verification keeps answering, from MySQL, while Redis is down;
// - no revoked key is accepted at any moment (a checker verifies every revoked
//   key on every instance the whole time); a revocation that cannot be
//   broadcast is stored and answered UNAVAILABLE, and its retry succeeds;
// - the subscriber reconnects by itself and caching resumes;
// - a key with usage limits gets UNAVAILABLE while Redis is down (fail
//   closed), and after a restart its credits continue from MySQL (the counter
//   is re-seeded from the last flush), not from zero.
import mysql from "mysql2/promise";
import type { RowDataPacket } from "mysql2/promise";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { VerifyCode } from "../../../gen/apikeys/v1/apikeys_pb.js";
import { type TestDatabase, freshDatabase } from "../../helpers/mysql.js";
import { TestRedis } from "../../helpers/redis.js";
import { type TestServer, startServer } from "../../helpers/server.js";
import { GRPC, Loop, codeOf, owner, pick, sleep, until } from "../support/load.js";

export interface RedisOutageOptions {
  /** Servers sharing the database and Redis. */
  instances: number;
  /** Kill/restart cycles. */
  cycles: number;
  outageMs: number;
  /** Healthy time before each outage. */
  steadyMs: number;
  /** Active keys under verification load. */
  keys: number;
  /** Verification lanes. */
  concurrency: number;
  timeoutMs: number;
}

const ORG = "org_redis_fault";
const LEASE_MS = 1000;
/** The broadcast's allowance on top of the lease (see src/broadcast/redis-broadcast.ts). */
const MARGIN_MS = 500;
const MONTHLY_CREDITS = 1000;
const COST = 10;
/** A verification that takes longer than this did not "keep answering". */
const CALL_TIMEOUT_MS = 5000;

export function redisOutageSuite(o: RedisOutageOptions): void {
  describe(`Redis killed and restarted under verification load (${o.instances} instances, ${o.cycles}× ${o.outageMs} ms)`, () => {
    let db: TestDatabase;
    let redis: TestRedis;
    let servers: TestServer[] = [];

    beforeAll(async () => {
      db = await freshDatabase();
      redis = await TestRedis.start();
      const env = { REDIS_URL: redis.url, CACHE_LEASE_MS: String(LEASE_MS), CREDIT_FLUSH_SECONDS: "1" };
      servers.push(await startServer({ databaseUrl: db.url, env })); // the first one migrates
      servers.push(...(await Promise.all(Array.from({ length: o.instances - 1 }, () => startServer({ databaseUrl: db.url, env })))));
      await until("every instance trusts its cache", () => servers.every((s) => s.app.cache!.isTrusted()), 10_000);
    });

    afterAll(async () => {
      await Promise.all(servers.map((s) => s.stop()));
      await redis?.kill();
      await db?.drop();
    });

    it(
      "keeps verifying from MySQL, never accepts a revoked key, resumes caching, and fails limited keys closed",
      async () => {
        const a = servers[0];
        const create = async (name: string, limits?: { monthlyCredits: bigint }) => {
          const res = await a.grpcTransportClient.createKey({ organizationId: ORG, actor: owner, name, limits });
          return { id: res.key!.id, secret: res.secret };
        };
        // Keys to revoke: 3 while healthy and 3 during each outage, plus 3 up front.
        const revocable = await Promise.all(Array.from({ length: 3 + 6 * o.cycles }, (_, i) => create(`revocable ${i}`)));
        const live = [...(await Promise.all(Array.from({ length: o.keys }, (_, i) => create(`live ${i}`)))), ...revocable];
        const limited = await create("limited", { monthlyCredits: BigInt(MONTHLY_CREDITS) });
        const mustReject: { id: string; secret: string }[] = [];
        const failures: string[] = [];
        let verifiedDuringOutage = 0;
        let outage = false;

        const verify = (s: TestServer, secret: string, cost = 0) =>
          s.grpcTransportClient.verifyKey({ key: secret, cost }, { timeoutMs: CALL_TIMEOUT_MS });
        const revoke = (s: TestServer, keyId: string) =>
          s.grpcTransportClient.revokeKey({ organizationId: ORG, keyId, actor: owner }, { timeoutMs: CALL_TIMEOUT_MS });
        /** Takes a key out of the load (a racing verification may see either answer) and revokes it. */
        const startRevoking = () => {
          const key = revocable.shift()!;
          live.splice(live.indexOf(key), 1);
          return key;
        };
        const revokeHealthy = async () => {
          const key = startRevoking();
          await revoke(pick(servers), key.id);
          mustReject.push(key);
        };

        // Warm every cache with every key, so that a missed invalidation would show.
        await Promise.all(servers.flatMap((s) => live.map((k) => verify(s, k.secret))));
        for (let i = 0; i < 3; i++) await revokeHealthy();

        const load = new Loop(
          async () => {
            const s = pick(servers);
            const key = pick(live);
            const wasOutage = outage;
            try {
              const res = await verify(s, key.secret);
              // A key being revoked has left `live` before its revocation started.
              if (!res.valid && live.includes(key)) failures.push(`live key answered ${VerifyCode[res.code]}`);
              if (wasOutage && outage) verifiedDuringOutage++;
            } catch (err) {
              failures.push(`verification failed (outage: ${wasOutage}): ${codeOf(err)}`);
            }
          },
          { concurrency: o.concurrency },
        );
        const checker = new Loop(async () => {
          for (const key of [...mustReject]) {
            for (const s of servers) {
              try {
                const res = await verify(s, key.secret);
                if (res.valid) failures.push(`ACCEPTED revoked key ${key.id} (outage: ${outage})`);
              } catch (err) {
                failures.push(`verification of a revoked key failed: ${codeOf(err)}`);
              }
            }
          }
        });

        let used = 0;
        const ledger = await mysql.createConnection(db.url);
        try {
          for (let cycle = 0; cycle < o.cycles; cycle++) {
            await sleep(o.steadyMs);
            // Spend credits, and let them reach MySQL (CREDIT_FLUSH_SECONDS=1) before Redis loses them.
            for (let i = 0; i < 3; i++) {
              const res = await verify(pick(servers), limited.secret, COST);
              used += COST;
              expect(res.valid).toBe(true);
              expect(Number(res.remainingCredits)).toBe(MONTHLY_CREDITS - used);
            }
            await until(
              "consumed credits are flushed to MySQL",
              async () => {
                const [rows] = await ledger.query<RowDataPacket[]>("SELECT used FROM credit_usage WHERE key_id = ?", [limited.id]);
                return rows.length === 1 && Number(rows[0].used) === used;
              },
              5000,
            );

            await redis.kill();
            outage = true;
            const distrustMs = await until(
              "every instance stops trusting its cache",
              () => servers.every((s) => !s.app.cache!.isTrusted()),
              LEASE_MS + MARGIN_MS,
            );
            const outageStarted = Date.now();
            // Revocations are stored but cannot be broadcast: UNAVAILABLE, and the key is rejected at once.
            const unannounced: { id: string; secret: string }[] = [];
            for (let i = 0; i < 3; i++) {
              const key = startRevoking();
              await expect(revoke(pick(servers), key.id)).rejects.toMatchObject({ code: GRPC.UNAVAILABLE });
              mustReject.push(key);
              unannounced.push(key);
              for (const s of servers) expect((await verify(s, key.secret)).code).toBe(VerifyCode.REVOKED);
            }
            // Limits fail closed, at once.
            for (const s of servers) {
              const started = Date.now();
              await expect(verify(s, limited.secret, COST)).rejects.toMatchObject({ code: GRPC.UNAVAILABLE });
              expect(Date.now() - started).toBeLessThan(1500);
            }
            await sleep(Math.max(0, o.outageMs - (Date.now() - outageStarted)));

            await redis.restart();
            const reconnectMs = await until(
              "every instance trusts its cache again",
              () => servers.every((s) => s.app.cache!.isTrusted()),
              10_000,
            );
            outage = false;
            // The callers retry: now the change is announced.
            for (const key of unannounced) await revoke(pick(servers), key.id);
            const hits = servers.map((s) => s.app.cache!.hits);
            const resumeMs = await until(
              "every instance serves from its cache again",
              () => servers.every((s, i) => s.app.cache!.hits > hits[i] + 10),
              5000,
            );
            // Redis restarted empty: the credit counter is seeded from MySQL, not started from zero.
            const limitsMs = await until(
              "limited keys verify again",
              async () => (await verify(pick(servers), limited.secret).catch(() => null))?.valid === true,
              5000,
            );
            const res = await verify(pick(servers), limited.secret, COST);
            used += COST;
            expect(res.valid).toBe(true);
            expect(Number(res.remainingCredits)).toBe(MONTHLY_CREDITS - used);
            for (let i = 0; i < 3; i++) await revokeHealthy();
            console.log(
              `[redis fault] cycle ${cycle + 1}: caches distrusted ${distrustMs} ms after kill -9; ` +
                `resubscribed and trusted ${reconnectMs} ms after restart; cache hits resumed after ${resumeMs} ms; ` +
                `limited keys verified again after ${limitsMs} ms more; ` +
                `${verifiedDuringOutage} verifications answered during outages so far`,
            );
          }
        } finally {
          await Promise.all([load.stop(), checker.stop(), ledger.end()]);
        }
        console.log(`[redis fault] ${load.iterations} verifications, ${checker.iterations} checker rounds over ${mustReject.length} revoked keys`);
        expect(failures).toEqual([]);
        expect(verifiedDuringOutage).toBeGreaterThan(0);
        expect(checker.iterations).toBeGreaterThan(o.cycles);
      },
      o.timeoutMs,
    );
  });
}
