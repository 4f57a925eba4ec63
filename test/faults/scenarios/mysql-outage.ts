// MySQL unreachable under load: the server reaches MariaDB through a TCP proxy
// the test controls (test/helpers/mariadb.ts), which first cuts every
// connection and refuses new ones (a stopped server), then holds every
// connection without a byte either way (a database that stopped answering).
// What must hold:
// - keys in the cache keep verifying (a cached answer needs no database);
// - keys not in the cache get UNAVAILABLE, never NOT_FOUND, and in bounded time;
// - management RPCs get UNAVAILABLE, in bounded time;
// - the pool recovers by itself after the database is back;
// - no key created before the fault is lost, every CreateKey that returned OK
//   is there afterwards and verifies, and no key is half-written.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Role, VerifyCode } from "../../../gen/apikeys/v1/apikeys_pb.js";
import { QUERY_TIMEOUT_MS } from "../../../src/store/mysql-pool.js";
import { DbProxy } from "../../helpers/mariadb.js";
import { type TestDatabase, freshDatabase } from "../../helpers/mysql.js";
import { TestRedis } from "../../helpers/redis.js";
import { type TestServer, startServer } from "../../helpers/server.js";
import { halfWrittenKeys } from "../support/consistency.js";
import { GRPC, Latencies, Loop, codeOf, owner, pick, sleep, until } from "../support/load.js";

export interface MySqlOutageOptions {
  /** Each cycle: cut, restore, hang, restore. */
  cycles: number;
  cutMs: number;
  /** At least QUERY_TIMEOUT_MS, so that calls run into the store's deadlines. */
  hangMs: number;
  /** Healthy time before each fault. */
  steadyMs: number;
  /** Keys verified before the faults, so in the cache. */
  cachedKeys: number;
  /** Keys never verified before: each first verification asks MySQL. */
  freshKeys: number;
  /** Lanes verifying cached keys; fresh-key probes and creates run on two lanes each. */
  concurrency: number;
  timeoutMs: number;
}

const ORG = "org_mysql_fault";
/**
 * The longest a call may take while the database is away: the store waits at
 * most QUERY_TIMEOUT_MS for a pooled connection and QUERY_TIMEOUT_MS for a
 * statement, plus scheduling slack on a busy machine.
 */
const BOUND_MS = 2 * QUERY_TIMEOUT_MS + 3000;
/** Clients give up later than that, so a call that overruns the bound is seen, not cut short. */
const CALL_TIMEOUT_MS = BOUND_MS + 5000;

interface Key {
  id: string;
  secret: string;
}

export function mysqlOutageSuite(o: MySqlOutageOptions): void {
  describe(`MySQL unreachable and unresponsive under load (${o.cycles}× cut ${o.cutMs} ms + hang ${o.hangMs} ms)`, () => {
    let db: TestDatabase;
    let proxy: DbProxy;
    let redis: TestRedis;
    let s: TestServer;

    beforeAll(async () => {
      [db, proxy, redis] = await Promise.all([freshDatabase(), DbProxy.start(), TestRedis.start()]);
      s = await startServer({ databaseUrl: proxy.url(db.name), env: { REDIS_URL: redis.url } });
      await until("the cache is trusted", () => s.app.cache!.isTrusted(), 10_000);
    });

    afterAll(async () => {
      proxy?.restore();
      await s?.stop();
      await Promise.all([proxy?.close(), redis?.kill()]);
      await db?.drop();
    });

    it(
      "cached keys keep verifying, the rest is UNAVAILABLE in bounded time, the pool recovers, nothing acknowledged is lost",
      async () => {
        const client = s.grpcTransportClient;
        const opts = { timeoutMs: CALL_TIMEOUT_MS };
        let serial = 0;
        const create = async (userId: string): Promise<Key> => {
          const res = await client.createKey(
            { organizationId: ORG, actor: { userId, role: Role.OWNER }, name: `key ${++serial}`, requestId: `r${serial}` },
            opts,
          );
          return { id: res.key!.id, secret: res.secret };
        };
        const createMany = async (n: number, userId: string) => {
          const keys: Key[] = [];
          for (let i = 0; i < n; i += 20) keys.push(...(await Promise.all(Array.from({ length: Math.min(20, n - i) }, () => create(userId)))));
          return keys;
        };
        const verify = (secret: string) => client.verifyKey({ key: secret }, opts);

        const cached = await createMany(o.cachedKeys, "u_cached");
        const fresh = await createMany(o.freshKeys, "u_fresh");
        // The management sweep works on this key, so that nothing it might change touches the others.
        const victim = await create("u_victim");
        const before = [...cached, ...fresh, victim];
        for (const key of cached) expect((await verify(key.secret)).valid).toBe(true);

        let fault: "none" | "cut" | "hang" = "none";
        const failures: string[] = [];
        /** Runs a call that may fail only with UNAVAILABLE, and only within BOUND_MS. */
        const bounded = async <T>(what: string, call: () => Promise<T>): Promise<T | "unavailable"> => {
          const started = Date.now();
          try {
            return await call();
          } catch (err) {
            if (codeOf(err) === GRPC.UNAVAILABLE) return "unavailable";
            failures.push(`${what} during ${fault}: ${codeOf(err)}`);
            return "unavailable";
          } finally {
            if (Date.now() - started > BOUND_MS) failures.push(`${what} during ${fault} took ${Date.now() - started} ms`);
          }
        };

        const cachedLatency = { none: new Latencies("cached VerifyKey, healthy"), fault: new Latencies("cached VerifyKey, database away") };
        const cachedLoad = new Loop(
          async () => {
            const during = fault === "none" ? cachedLatency.none : cachedLatency.fault;
            try {
              const res = await during.time(() => verify(pick(cached).secret));
              if (!res.valid) failures.push(`cached key answered ${VerifyCode[res.code]} during ${fault}`);
            } catch (err) {
              failures.push(`cached key failed during ${fault}: ${codeOf(err)}`);
            }
          },
          { concurrency: o.concurrency },
        );
        const unavailable = { cut: 0, hang: 0 };
        let probed = 0;
        const probes = new Loop(
          async () => {
            // A fresh key verified once is cached from then on: take the next one.
            const key = fresh[probed++ % Math.max(1, fresh.length)];
            if (!key) return;
            const during = fault;
            const res = await bounded("VerifyKey of an uncached key", () => verify(key.secret));
            if (res === "unavailable") {
              if (during !== "none") unavailable[during]++;
            } else if (res.valid) {
              fresh.splice(fresh.indexOf(key), 1);
            } else {
              failures.push(`uncached key answered ${VerifyCode[res.code]} during ${during}`);
            }
          },
          { concurrency: 2, pauseMs: 25 },
        );
        const acknowledged: Key[] = [];
        const creates = new Loop(
          async () => {
            const res = await bounded("CreateKey", () => create("u_loader"));
            if (res !== "unavailable") acknowledged.push(res);
          },
          { concurrency: 2 },
        );

        const managementSweep = async () => {
          const actor = owner;
          const calls: Record<string, () => Promise<unknown>> = {
            CreateKey: () => client.createKey({ organizationId: ORG, actor, name: "during the fault" }, opts),
            GetKey: () => client.getKey({ organizationId: ORG, keyId: victim.id, actor }, opts),
            ListKeys: () => client.listKeys({ organizationId: ORG, actor }, opts),
            UpdateKey: () =>
              client.updateKey({ organizationId: ORG, keyId: victim.id, actor, name: "renamed", updateMask: { paths: ["name"] } }, opts),
            RotateKey: () => client.rotateKey({ organizationId: ORG, keyId: victim.id, actor }, opts),
            RevokeKey: () => client.revokeKey({ organizationId: ORG, keyId: victim.id, actor }, opts),
            RevokeKeys: () => client.revokeKeys({ organizationId: ORG, actor, createdBy: "u_victim" }, opts),
            SetMemberRole: () => s.orgs.setMemberRole({ organizationId: ORG, userId: "u_victim", role: Role.ADMIN, actor }, opts),
            ListAuditEvents: () => s.orgs.listAuditEvents({ organizationId: ORG, actor }, opts),
          };
          const outcomes = await Promise.all(
            Object.entries(calls).map(async ([name, call]) => [name, await bounded(name, call)] as const),
          );
          const answered = outcomes.filter(([, res]) => res !== "unavailable").map(([name]) => name);
          expect(answered, "management RPCs that did not fail with UNAVAILABLE").toEqual([]);
        };
        const recovered = async () => {
          proxy.restore();
          fault = "none";
          const recoveryMs = await until(
            "management calls and uncached verifications succeed again",
            async () => {
              try {
                await client.getKey({ organizationId: ORG, keyId: victim.id, actor: owner }, opts);
                const key = await create("u_after");
                acknowledged.push(key);
                return (await verify(key.secret)).valid;
              } catch {
                return false;
              }
            },
            BOUND_MS,
          );
          return recoveryMs;
        };

        try {
          for (let cycle = 0; cycle < o.cycles; cycle++) {
            await sleep(o.steadyMs);
            proxy.cut();
            fault = "cut";
            await Promise.all([managementSweep(), sleep(o.cutMs)]);
            const afterCut = await recovered();

            await sleep(o.steadyMs);
            proxy.hang();
            fault = "hang";
            await Promise.all([managementSweep(), sleep(o.hangMs)]);
            const afterHang = await recovered();
            console.log(
              `[mysql fault] cycle ${cycle + 1}: recovered by itself ${afterCut} ms after a cut and ${afterHang} ms after a hang ended`,
            );
          }
        } finally {
          await Promise.all([cachedLoad.stop(), probes.stop(), creates.stop()]);
        }
        console.log(`[mysql fault] ${cachedLatency.none}\n[mysql fault] ${cachedLatency.fault}`);
        console.log(
          `[mysql fault] uncached verifications answered UNAVAILABLE: ${unavailable.cut} during cuts, ${unavailable.hang} during hangs; ` +
            `${acknowledged.length} CreateKey acknowledged under load`,
        );
        expect(failures).toEqual([]);
        expect(unavailable.cut).toBeGreaterThan(0);
        expect(unavailable.hang).toBeGreaterThan(0);
        expect(cachedLatency.fault.count).toBeGreaterThan(0);

        // Nothing acknowledged is lost, and every acknowledged key works.
        const listed = new Set<string>();
        let pageToken = "";
        do {
          const page = await client.listKeys({ organizationId: ORG, actor: owner, showRevoked: true, pageSize: 1000, pageToken });
          for (const k of page.keys) listed.add(k.id);
          pageToken = page.nextPageToken;
        } while (pageToken !== "");
        expect(before.filter((k) => !listed.has(k.id))).toEqual([]);
        expect(acknowledged.filter((k) => !listed.has(k.id))).toEqual([]);
        const rejected: string[] = [];
        for (const key of [...before, ...acknowledged]) {
          const res = await verify(key.secret);
          if (!res.valid) rejected.push(`${key.id}: ${VerifyCode[res.code]}`);
        }
        expect(rejected).toEqual([]);
        expect(await halfWrittenKeys(db.url)).toEqual([]);
      },
      o.timeoutMs,
    );
  });
}
