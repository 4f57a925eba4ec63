// One instance's own link to Redis broken, the others healthy (issue 19): a
// TCP proxy (support/tcp-proxy.ts) stands between instance P and a private
// redis-server; B and C reach it directly. All three share one database.
// - P, the revoking instance, cut off: RevokeKey answers UNAVAILABLE, and the
//   change still reaches B and C (the outbox) within the documented bound;
//   after that bound no instance accepts the key, ever.
// - P cut off: CreateKey through P still returns the secret (the key is
//   stored; its "created" announcement is in the outbox), and the key
//   verifies on B and C within the same bound.
// - P black-holed (a half-open connection: Redis still counts P as subscribed,
//   P's writes go nowhere): RevokeKey through P answers, UNAVAILABLE or OK,
//   instead of hanging; the same bound then holds.
// - P black-holed while B and C revoke: once P's lease has run out, their
//   RevokeKeys stop waiting for P; P accepts none of those keys, during the
//   black hole or after it heals.
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { VerifyCode } from "../../../gen/apikeys/v1/apikeys_pb.js";
import { type TestDatabase, freshDatabase } from "../../helpers/mysql.js";
import { TestRedis } from "../../helpers/redis.js";
import { type TestServer, startServer } from "../../helpers/server.js";
import { GRPC, Loop, codeOf, owner, pick, sleep, until } from "../support/load.js";
import { TcpProxy } from "../support/tcp-proxy.js";

export interface PartitionOptions {
  /** Revocations through the healthy instances while P is black-holed. */
  revocations: number;
  /** How long after its bound each revoked key keeps being checked on every instance. */
  watchMs: number;
  timeoutMs: number;
}

const ORG = "org_partition";
const LEASE_MS = 1000;
/** The broadcast's allowance on top of the lease (docs/revocation.md). */
const MARGIN_MS = 500;
/** How often instances look for unannounced changes in the outbox (OUTBOX_POLL_MS, set to its default). */
const OUTBOX_POLL_MS = 1000;
/**
 * How soon a change whose RevokeKey answered UNAVAILABLE has reached every instance: docs/revocation.md's
 * 2 × OUTBOX_POLL_MS + CACHE_LEASE_MS + margin after the commit (which comes before the answer), plus a
 * second for an outbox query, a Redis round trip and a shared machine's scheduling.
 */
const UNANNOUNCED_BOUND_MS = 2 * OUTBOX_POLL_MS + LEASE_MS + MARGIN_MS + 1000;
/** A RevokeKey through an instance that cannot reach Redis must answer within this, not hang. */
const ANSWER_BOUND_MS = 2 * (LEASE_MS + MARGIN_MS) + 2000;

/** Whether an instance answers from its cache now (its lease is running). */
const trusts = (s: TestServer) => s.app.cache!.isTrusted();

interface Key {
  id: string;
  secret: string;
}

export function partitionSuite(o: PartitionOptions): void {
  describe("one instance's link to Redis broken (TCP proxy), the others healthy", () => {
    let db: TestDatabase;
    let redis: TestRedis;
    let proxy: TcpProxy;
    let p: TestServer;
    let b: TestServer;
    let c: TestServer;
    const all = () => [p, b, c];
    const name = (s: TestServer) => (s === p ? "P" : s === b ? "B" : "C");

    beforeAll(async () => {
      [db, redis] = await Promise.all([freshDatabase(), TestRedis.start()]);
      const env = { CACHE_LEASE_MS: String(LEASE_MS), OUTBOX_POLL_MS: String(OUTBOX_POLL_MS), REDIS_URL: redis.url };
      b = await startServer({ databaseUrl: db.url, env }); // the first one migrates
      c = await startServer({ databaseUrl: db.url, env });
    });

    // A fresh P and proxy for each test: what one test broke cannot leak into the next.
    beforeEach(async () => {
      proxy = await TcpProxy.start(redis.port);
      p = await startServer({ databaseUrl: db.url, env: { CACHE_LEASE_MS: String(LEASE_MS), OUTBOX_POLL_MS: String(OUTBOX_POLL_MS), REDIS_URL: proxy.url } });
      await until("every instance trusts its cache", () => all().every(trusts), 10_000);
    });

    afterEach(async () => {
      await p?.stop();
      await proxy?.stop();
    });

    afterAll(async () => {
      await Promise.all([b, c].map((s) => s?.stop()));
      await redis?.kill();
      await db?.drop();
    });

    const verify = (s: TestServer, key: Key) => s.grpcTransportClient.verifyKey({ key: key.secret }, { timeoutMs: 10_000 });
    const revoke = (s: TestServer, key: Key, timeoutMs = 30_000) =>
      s.grpcTransportClient.revokeKey({ organizationId: ORG, keyId: key.id, actor: owner }, { timeoutMs });
    /** Keys cached on every instance, so an instance that missed a revocation would answer VALID. */
    const cachedKeys = async (n: number): Promise<Key[]> => {
      const keys = await Promise.all(
        Array.from({ length: n }, async () => {
          const res = await b.grpcTransportClient.createKey({ organizationId: ORG, actor: owner, name: "partition" });
          return { id: res.key!.id, secret: res.secret };
        }),
      );
      for (const s of all()) for (const k of keys) expect((await verify(s, k)).valid).toBe(true);
      return keys;
    };
    /**
     * Verifies `key` on every instance, over and over, from now until `until()` has passed `deadline` by
     * o.watchMs. Returns each instance's latest start of an accepted verification (performance.now()).
     */
    const watch = async (key: Key, deadline: () => number) => {
      const lastAccepted = new Map<string, number>();
      const failures: string[] = [];
      const loop = new Loop(
        async () => {
          const s = pick(all());
          const started = performance.now();
          try {
            const res = await verify(s, key);
            if (res.valid) lastAccepted.set(name(s), Math.max(started, lastAccepted.get(name(s)) ?? 0));
            else if (res.code !== VerifyCode.REVOKED) failures.push(`${name(s)} answered ${VerifyCode[res.code]}`);
          } catch (err) {
            failures.push(`VerifyKey on ${name(s)}: ${codeOf(err)}`);
          }
        },
        { concurrency: 3, pauseMs: 5 },
      );
      await until("the watch is over", () => performance.now() > deadline() + o.watchMs, 60_000 + o.watchMs);
      await loop.stop();
      expect(failures).toEqual([]);
      return { lastAccepted, checks: loop.iterations };
    };

    it(
      "P alone cut off: RevokeKey answers UNAVAILABLE, and no instance accepts the key after the bound",
      async () => {
        const [key] = await cachedKeys(1);
        proxy.cut();
        await sleep(100);
        const started = performance.now();
        let returned = Number.POSITIVE_INFINITY;
        const watching = watch(key, () => returned + UNANNOUNCED_BOUND_MS);
        await expect(revoke(p, key)).rejects.toMatchObject({ code: GRPC.UNAVAILABLE });
        returned = performance.now();
        expect(returned - started).toBeLessThan(ANSWER_BOUND_MS);
        const { lastAccepted, checks } = await watching;
        const late = [...lastAccepted].filter(([, at]) => at > returned + UNANNOUNCED_BOUND_MS);
        console.log(
          `[partition] cut: RevokeKey answered UNAVAILABLE in ${(returned - started).toFixed(0)} ms; last acceptance after it: ` +
            `${[...lastAccepted].map(([n, at]) => `${n} +${(at - returned).toFixed(0)} ms`).join(", ") || "none"} (${checks} checks)`,
        );
        expect(late.map(([n, at]) => `${n} accepted the key ${(at - returned).toFixed(0)} ms after RevokeKey answered`)).toEqual([]);
      },
      o.timeoutMs,
    );

    it(
      "P alone cut off: CreateKey through P returns the secret, and B and C verify the key within the bound",
      async () => {
        proxy.cut();
        await sleep(100);
        const started = performance.now();
        // Idempotent: a create answered UNAVAILABLE after its commit would have lost the secret for good (a retry
        // with the same request_id returns the key without it).
        const res = await p.grpcTransportClient.createKey(
          { organizationId: ORG, actor: owner, name: "created-cut-off", requestId: "cut-off-create" },
          { timeoutMs: 30_000 },
        );
        const returned = performance.now();
        expect(res.secret).not.toBe("");
        expect(returned - started).toBeLessThan(ANSWER_BOUND_MS);
        const key = { id: res.key!.id, secret: res.secret };
        // B and C learn of the secret from the outbox (published by one of them), not from P's broadcast.
        const seen = new Map<string, number>();
        await until(
          "B and C verify the key created through the cut-off P",
          async () => {
            for (const s of [b, c]) {
              if (seen.has(name(s))) continue;
              if ((await verify(s, key)).valid) seen.set(name(s), performance.now() - returned);
            }
            return seen.size === 2;
          },
          UNANNOUNCED_BOUND_MS + 10_000,
        );
        console.log(`[partition] cut: CreateKey answered in ${(returned - started).toFixed(0)} ms; valid on ${[...seen].map(([n, ms]) => `${n} after ${ms.toFixed(0)} ms`).join(", ")}`);
        for (const [n, ms] of seen) expect(ms, `${n} verified the key ${ms.toFixed(0)} ms after CreateKey answered`).toBeLessThan(UNANNOUNCED_BOUND_MS);
        // The retry a client makes after a lost answer returns the same key (its secret was given once, above).
        const again = await b.grpcTransportClient.createKey({ organizationId: ORG, actor: owner, name: "created-cut-off", requestId: "cut-off-create" });
        expect(again.key!.id).toBe(key.id);
      },
      o.timeoutMs,
    );

    it(
      "P alone black-holed: RevokeKey answers instead of hanging, and no instance accepts the key after the bound",
      async () => {
        const [key] = await cachedKeys(1);
        proxy.blackHole();
        const started = performance.now();
        let returned = Number.POSITIVE_INFINITY;
        let bound = UNANNOUNCED_BOUND_MS;
        const watching = watch(key, () => returned + bound);
        const outcome = await revoke(p, key, ANSWER_BOUND_MS + 2000).then(
          () => "OK",
          (err) => codeOf(err),
        );
        returned = performance.now();
        // OK promises more than UNAVAILABLE: every instance rejects the key from the moment it returned.
        if (outcome === "OK") bound = 0;
        expect([GRPC.UNAVAILABLE, "OK"]).toContain(outcome);
        expect(returned - started).toBeLessThan(ANSWER_BOUND_MS);
        const { lastAccepted } = await watching;
        const late = [...lastAccepted].filter(([, at]) => at > returned + bound);
        console.log(`[partition] black hole: RevokeKey answered ${outcome === "OK" ? "OK" : outcome} in ${(returned - started).toFixed(0)} ms`);
        expect(late.map(([n, at]) => `${n} accepted the key ${(at - returned).toFixed(0)} ms after RevokeKey answered ${outcome}`)).toEqual([]);
      },
      o.timeoutMs,
    );

    it(
      "P black-holed while B and C revoke: they stop waiting for P once its lease ran out, and P accepts none of those keys",
      async () => {
        const keys = await cachedKeys(o.revocations);
        const returnedAt = new Map<string, number>();
        const failures: string[] = [];
        // Every revoked key, on every instance, all along: nothing accepted once its RevokeKey returned.
        const checker = new Loop(
          async () => {
            const revoked = keys.filter((k) => returnedAt.has(k.id));
            if (revoked.length === 0) return;
            const key = pick(revoked);
            const s = pick(all());
            const started = performance.now();
            const res = await verify(s, key).catch((err) => ({ valid: false, code: codeOf(err) }));
            if (res.valid && started > returnedAt.get(key.id)!) failures.push(`${name(s)} accepted revoked ${key.id}`);
          },
          { concurrency: 3, pauseMs: 5 },
        );
        proxy.blackHole();
        // P's lease (renewed by its last ping through the proxy) is over by then, whatever the margin.
        await sleep(2 * (LEASE_MS + MARGIN_MS));
        const took: number[] = [];
        const started = performance.now();
        for (const [i, key] of keys.entries()) {
          const t = performance.now();
          await revoke(i % 2 === 0 ? b : c, key);
          returnedAt.set(key.id, performance.now());
          took.push(performance.now() - t);
        }
        const total = performance.now() - started;
        // Today each of them waits lease + margin for P's ack; the protocol waits for P only while its lease may run.
        console.log(
          `[partition] ${keys.length} revocations with P black-holed: ${total.toFixed(0)} ms in all, slowest ${Math.max(...took).toFixed(0)} ms`,
        );
        // Verifications already queued at P when the link heals, and right after: P must answer them from MySQL.
        const atHeal = keys.map((k) => verify(p, k));
        proxy.restore();
        const afterHeal = await Promise.all(keys.map((k) => verify(p, k)));
        await checker.stop();
        expect((await Promise.all(atHeal)).filter((r) => r.valid)).toEqual([]);
        expect(afterHeal.filter((r) => r.valid)).toEqual([]);
        expect(failures).toEqual([]);
        expect(checker.iterations).toBeGreaterThan(keys.length);
        // A correctness bound, not a performance target: waiting for P would cost lease + margin each; half of that
        // in all leaves room for a machine so loaded that a plain RevokeKey takes most of a second.
        expect(total).toBeLessThan((keys.length * (LEASE_MS + MARGIN_MS)) / 2);
        // Once P trusts its cache again, still nothing.
        await until("P trusts its cache again", () => trusts(p), 20_000);
        for (const k of keys) expect((await verify(p, k)).code).toBe(VerifyCode.REVOKED);
      },
      o.timeoutMs,
    );
  });
}
