// The usage limiters on their own, with an injected clock: the semantics both
// share (Redis and memory), then what only the Redis one has — seeding from the
// credit ledger, flushing to it, failing closed — against a real Redis and a
// real three-master Redis Cluster (every key's counters on the slot of its own
// hash tag, so the keys of one test land on different masters), and the MySQL
// ledger against a real MariaDB.
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { redisTarget } from "../../src/config.js";
import { ApiError, Status } from "../../src/keys/errors.js";
import { randomBase62 } from "../../src/keys/key-format.js";
import type { KeyRecord, LimitsRecord } from "../../src/keys/records.js";
import type { CreditLedger, CreditUsage, ManagedUsageLimiter } from "../../src/keys/ports.js";
import { MemoryCreditLedger } from "../../src/limits/credit-ledger.js";
import { MemoryUsageLimiter } from "../../src/limits/memory-usage-limiter.js";
import { COUNTER_KEYS, RedisUsageLimiter } from "../../src/limits/redis-usage-limiter.js";
import { type RedisClient, type RedisTarget, redisClient } from "../../src/redis/connections.js";
import { MySqlStore } from "../../src/store/mysql-store.js";
import { type TestDatabase, freshDatabase } from "../helpers/mysql.js";
import { keyRecord } from "../helpers/records.js";
import { TestRedis } from "../helpers/redis.js";
import { TestRedisCluster } from "../helpers/redis-cluster.js";

const REDIS_URL = process.env.REDIS_TEST_URL ?? "redis://127.0.0.1:6379";
const silent = pino({ level: "silent" });
/** 2031-01-31 23:58:00 UTC: two minutes before a day and a month end. */
const T0 = Date.UTC(2031, 0, 31, 23, 58, 0);
const MINUTE = 60_000;

type LimitedKey = KeyRecord & { limits: LimitsRecord };

function keyWith(limits: Partial<LimitsRecord>): LimitedKey {
  return keyRecord({
    id: `key_${randomBase62(16)}`,
    name: "",
    preview: "",
    createdBy: "u_1",
    createTime: T0,
    updateTime: T0,
    limits: { requestsPerMinute: 0, requestsPerDay: 0, monthlyCredits: 0, ...limits },
  }) as LimitedKey;
}

let cluster: TestRedisCluster;

beforeAll(async () => {
  cluster = await TestRedisCluster.start();
});
afterAll(async () => {
  await cluster?.stop();
});

/** Where the Redis tests run: the shared standalone server and the file's own cluster (started by then). */
const topologies: [string, () => RedisTarget][] = [
  ["standalone", () => redisTarget({ REDIS_URL })],
  ["cluster", () => redisTarget({ REDIS_CLUSTER_NODES: cluster.seeds })],
];

function redisLimiter(ledger: CreditLedger = new MemoryCreditLedger(), redis: RedisTarget = redisTarget({ REDIS_URL })): RedisUsageLimiter {
  return new RedisUsageLimiter({ redis, ledger, flushIntervalMs: 3_600_000, logger: silent });
}

const limiters: [string, () => ManagedUsageLimiter][] = [
  ...topologies.map(([name, target]): [string, () => ManagedUsageLimiter] => [`redis ${name}`, () => redisLimiter(undefined, target())]),
  ["memory", () => new MemoryUsageLimiter()],
];

describe.each(limiters)("usage limits (%s)", (_name, make) => {
  let limiter: ManagedUsageLimiter;

  beforeAll(async () => {
    limiter = make();
    await limiter.start();
  });
  afterAll(async () => {
    await limiter?.stop();
  });

  it("admits requests_per_minute requests per minute window, then rate-limits until the window ends", async () => {
    const key = keyWith({ requestsPerMinute: 3 });
    const verdicts = [];
    for (let i = 0; i < 5; i++) verdicts.push(await limiter.consume(key, 0, T0 + 1000 * i));
    expect(verdicts.map((v) => v.verdict)).toEqual(["ok", "ok", "ok", "rate_limited", "rate_limited"]);
    expect(verdicts.map((v) => v.rateLimit?.remaining)).toEqual([2, 1, 0, 0, 0]);
    expect(verdicts.every((v) => v.rateLimit?.limit === 3 && timestampMs(v.rateLimit.resetTime!) === T0 + MINUTE)).toBe(true);
    expect(verdicts[0].remainingCredits).toBeUndefined();
    // The next window (also the last second of the old one) counts afresh.
    expect((await limiter.consume(key, 0, T0 + MINUTE - 1)).verdict).toBe("rate_limited");
    const next = await limiter.consume(key, 0, T0 + MINUTE);
    expect(next.verdict).toBe("ok");
    expect(next.rateLimit?.remaining).toBe(2);
    expect(timestampMs(next.rateLimit!.resetTime!)).toBe(T0 + 2 * MINUTE);
  });

  it("reports the tightest limit: the day window once it has fewer requests left", async () => {
    const key = keyWith({ requestsPerMinute: 10, requestsPerDay: 2 });
    const first = await limiter.consume(key, 0, T0);
    expect(first.rateLimit?.limit).toBe(2);
    expect(first.rateLimit?.remaining).toBe(1);
    const midnight = Date.UTC(2031, 1, 1);
    expect(timestampMs(first.rateLimit!.resetTime!)).toBe(midnight);
    await limiter.consume(key, 0, T0 + MINUTE);
    const third = await limiter.consume(key, 0, T0 + MINUTE + 1);
    expect(third.verdict).toBe("rate_limited");
    expect(third.rateLimit?.remaining).toBe(0);
    // A new UTC day.
    expect((await limiter.consume(key, 0, midnight)).verdict).toBe("ok");
  });

  it("consumes credits by cost, never below zero; cost 0 answers even with nothing left", async () => {
    const key = keyWith({ monthlyCredits: 10 });
    const seq = [4, 4, 4, 2, 0, 1];
    const outcomes = [];
    for (const cost of seq) outcomes.push(await limiter.consume(key, cost, T0));
    expect(outcomes.map((o) => o.verdict)).toEqual(["ok", "ok", "usage_exceeded", "ok", "ok", "usage_exceeded"]);
    expect(outcomes.map((o) => o.remainingCredits)).toEqual([6n, 2n, 2n, 0n, 0n, 0n]);
    expect(outcomes[0].rateLimit).toBeUndefined();
  });

  it("refills credits at the start of the next UTC month", async () => {
    const key = keyWith({ monthlyCredits: 10 });
    expect((await limiter.consume(key, 10, T0)).remainingCredits).toBe(0n);
    expect((await limiter.consume(key, 1, Date.UTC(2031, 1, 1) - 1)).verdict).toBe("usage_exceeded");
    const february = await limiter.consume(key, 1, Date.UTC(2031, 1, 1));
    expect(february.verdict).toBe("ok");
    expect(february.remainingCredits).toBe(9n);
  });

  it("is all or nothing: a request over its credits does not count against the rate limit, and vice versa", async () => {
    const key = keyWith({ requestsPerMinute: 2, monthlyCredits: 5 });
    expect((await limiter.consume(key, 6, T0)).verdict).toBe("usage_exceeded");
    expect((await limiter.consume(key, 1, T0)).rateLimit?.remaining).toBe(1);
    expect((await limiter.consume(key, 1, T0)).rateLimit?.remaining).toBe(0);
    const limited = await limiter.consume(key, 1, T0);
    expect(limited.verdict).toBe("rate_limited");
    expect(limited.remainingCredits).toBe(3n);
  });

  it("keeps the month's usage when the limits change", async () => {
    const key = keyWith({ monthlyCredits: 10 });
    await limiter.consume(key, 8, T0);
    const raised = await limiter.consume({ ...key, limits: { ...key.limits, monthlyCredits: 20 } }, 0, T0);
    expect(raised.remainingCredits).toBe(12n);
    const lowered = await limiter.consume({ ...key, limits: { ...key.limits, monthlyCredits: 5 } }, 0, T0);
    expect(lowered.verdict).toBe("ok");
    expect(lowered.remainingCredits).toBe(0n);
  });

  it("admits exactly the limit under concurrency, and hands out every credit exactly once", async () => {
    const key = keyWith({ requestsPerMinute: 50 });
    const rate = await Promise.all(Array.from({ length: 200 }, () => limiter.consume(key, 0, T0)));
    expect(rate.filter((o) => o.verdict === "ok")).toHaveLength(50);
    const credited = keyWith({ monthlyCredits: 100 });
    const spent = await Promise.all(Array.from({ length: 200 }, () => limiter.consume(credited, 3, T0)));
    const ok = spent.filter((o) => o.verdict === "ok");
    expect(ok).toHaveLength(33);
    // Each admitted call saw a distinct balance: no lost or doubled update.
    expect(new Set(ok.map((o) => o.remainingCredits)).size).toBe(33);
    expect(spent.every((o) => o.remainingCredits! >= 0n)).toBe(true);
    expect((await limiter.consume(credited, 0, T0)).remainingCredits).toBe(1n);
  });
});

describe.each(topologies)("RedisUsageLimiter on %s: credit ledger", (_name, topology) => {
  let target: RedisTarget;
  let redis: RedisClient;
  const redisLimiter = (ledger: CreditLedger) => new RedisUsageLimiter({ redis: target, ledger, flushIntervalMs: 3_600_000, logger: silent });

  beforeAll(async () => {
    target = topology();
    redis = redisClient(target, "limiter", { logger: silent });
    await redis.connect();
  });
  afterAll(() => {
    redis?.disconnect();
  });

  it("seeds a month's missing counter from the ledger, once for concurrent first uses", async () => {
    const ledger = new MemoryCreditLedger();
    const key = keyWith({ monthlyCredits: 100 });
    await ledger.save([{ organizationId: key.organizationId, keyId: key.id, month: "203101", used: 40 }]);
    const limiter = redisLimiter(ledger);
    await limiter.start();
    try {
      const outcomes = await Promise.all(Array.from({ length: 50 }, () => limiter.consume(key, 1, T0)));
      expect(limiter.seeds).toBe(1);
      expect(outcomes.every((o) => o.verdict === "ok")).toBe(true);
      expect((await limiter.consume(key, 0, T0)).remainingCredits).toBe(10n);
    } finally {
      await limiter.stop();
    }
  });

  it("flushes consumed credits to the ledger, and a counter lost from Redis resumes from there", async () => {
    const ledger = new MemoryCreditLedger();
    const key = keyWith({ monthlyCredits: 100 });
    const limiter = redisLimiter(ledger);
    await limiter.start();
    try {
      await limiter.consume(key, 30, T0);
      await limiter.flush();
      expect(await ledger.load(key.organizationId, key.id, "203101")).toBe(30);
      await limiter.consume(key, 5, T0);
      await limiter.flush();
      expect(await ledger.load(key.organizationId, key.id, "203101")).toBe(35);
      // Redis loses its data: the month is not handed out afresh.
      await redis.del(COUNTER_KEYS.credits(key.id, "203101"));
      const after = await limiter.consume(key, 0, T0);
      expect(after.remainingCredits).toBe(65n);
      // A flush that finds the counter gone leaves the ledger as it was.
      await redis.del(COUNTER_KEYS.credits(key.id, "203101"));
      await limiter.flush();
      expect(await ledger.load(key.organizationId, key.id, "203101")).toBe(35);
    } finally {
      await limiter.stop();
    }
  });

  it("flushes on stop", async () => {
    const ledger = new MemoryCreditLedger();
    const key = keyWith({ monthlyCredits: 100 });
    const limiter = redisLimiter(ledger);
    await limiter.start();
    await limiter.consume(key, 7, T0);
    await limiter.stop();
    expect(await ledger.load(key.organizationId, key.id, "203101")).toBe(7);
  });

  it("fails closed with UNAVAILABLE when the ledger cannot seed a counter", async () => {
    const down: CreditLedger = {
      load: () => Promise.reject(new Error("connect ECONNREFUSED")),
      save: () => Promise.reject(new Error("connect ECONNREFUSED")),
      close: () => Promise.resolve(),
    };
    const limiter = redisLimiter(down);
    await limiter.start();
    try {
      const err = await limiter.consume(keyWith({ monthlyCredits: 10 }), 1, T0).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ApiError);
      expect((err as ApiError).code).toBe(Status.UNAVAILABLE);
      // Rate limits alone need no ledger.
      expect((await limiter.consume(keyWith({ requestsPerMinute: 1 }), 0, T0)).verdict).toBe("ok");
    } finally {
      await limiter.stop();
    }
  });

  it("keeps credits the ledger could not take for the next flush", async () => {
    const saved: CreditUsage[][] = [];
    let failing = true;
    const flaky: CreditLedger = {
      load: () => Promise.resolve(0),
      save: (entries) => (failing ? Promise.reject(new Error("lock wait timeout")) : (saved.push([...entries]), Promise.resolve())),
      close: () => Promise.resolve(),
    };
    const key = keyWith({ monthlyCredits: 100 });
    const limiter = redisLimiter(flaky);
    await limiter.start();
    try {
      await limiter.consume(key, 3, T0);
      await limiter.flush();
      failing = false;
      await limiter.flush();
      expect(saved).toEqual([[{ organizationId: key.organizationId, keyId: key.id, month: "203101", used: 3 }]]);
    } finally {
      await limiter.stop();
    }
  });

  it("a flush asked for during a slow one also saves what was consumed since", async () => {
    const ledger = new MemoryCreditLedger();
    let release = () => {};
    const gate = new Promise<void>((r) => (release = r));
    const slow: CreditLedger = {
      load: (organizationId, id, month) => ledger.load(organizationId, id, month),
      save: async (entries) => {
        await gate;
        await ledger.save(entries);
      },
      close: () => Promise.resolve(),
    };
    const key = keyWith({ monthlyCredits: 100 });
    const limiter = redisLimiter(slow);
    await limiter.start();
    try {
      await limiter.consume(key, 1, T0);
      const first = limiter.flush();
      await new Promise((r) => setTimeout(r, 20));
      await limiter.consume(key, 2, T0);
      const second = limiter.flush();
      release();
      await Promise.all([first, second]);
      expect(await ledger.load(key.organizationId, key.id, "203101")).toBe(3);
    } finally {
      await limiter.stop();
    }
  });

  it("flushes the counters of keys on every master in one flush", async () => {
    const ledger = new MemoryCreditLedger();
    const keys = Array.from({ length: 60 }, () => keyWith({ monthlyCredits: 100 }));
    const limiter = redisLimiter(ledger);
    await limiter.start();
    try {
      await Promise.all(keys.map((key, i) => limiter.consume(key, 1 + (i % 7), T0)));
      await limiter.flush();
      expect(limiter.flushes).toBe(1);
      expect(await Promise.all(keys.map((key) => ledger.load(key.organizationId, key.id, "203101")))).toEqual(keys.map((_, i) => 1 + (i % 7)));
    } finally {
      await limiter.stop();
    }
  });

  it("is exact across instances: limits and credits shared by three limiters", async () => {
    const instances = [0, 1, 2].map(() => redisLimiter(new MemoryCreditLedger()));
    await Promise.all(instances.map((l) => l.start()));
    try {
      const keys = Array.from({ length: 12 }, () => keyWith({ requestsPerMinute: 20, monthlyCredits: 30 }));
      // 12 keys × 3 instances × 15 calls of cost 1: each key gets 45 calls for 20 requests a minute and 30 credits.
      const outcomes = await Promise.all(
        keys.flatMap((key) => instances.flatMap((l) => Array.from({ length: 15 }, () => l.consume(key, 1, T0).then((o) => ({ key, o }))))),
      );
      for (const key of keys) {
        const mine = outcomes.filter((x) => x.key === key).map((x) => x.o);
        expect(mine.filter((o) => o.verdict === "ok")).toHaveLength(20);
        expect(new Set(mine.filter((o) => o.verdict === "ok").map((o) => o.remainingCredits)).size).toBe(20);
      }
      // Credits are shared too: 10 left for each key, whichever instance asks.
      for (const [i, key] of keys.entries()) expect((await instances[i % 3].consume(key, 0, T0 + MINUTE)).remainingCredits).toBe(10n);
    } finally {
      await Promise.all(instances.map((l) => l.stop()));
    }
  });
});

describe("RedisUsageLimiter on a standalone server that goes down", () => {
  it("fails closed, fast, while Redis is down, and recovers when it is back", async () => {
    const server = await TestRedis.start();
    const limiter = redisLimiter(new MemoryCreditLedger(), redisTarget({ REDIS_URL: server.url }));
    await limiter.start();
    try {
      const key = keyWith({ requestsPerMinute: 100, monthlyCredits: 100 });
      expect((await limiter.consume(key, 1, T0)).verdict).toBe("ok");
      await server.kill();
      const started = Date.now();
      const err = await limiter.consume(key, 1, T0).catch((e: unknown) => e);
      expect((err as ApiError).code).toBe(Status.UNAVAILABLE);
      expect(Date.now() - started).toBeLessThan(1500);
      await server.restart();
      const deadline = Date.now() + 10_000;
      for (;;) {
        const res = await limiter.consume(key, 1, T0).catch((e: unknown) => e);
        if (!(res instanceof ApiError)) {
          // The restarted server is empty; with a ledger that never saw a flush the month starts at 0.
          expect(res).toMatchObject({ verdict: "ok", remainingCredits: 99n });
          break;
        }
        if (Date.now() > deadline) throw res;
        await new Promise((r) => setTimeout(r, 50));
      }
    } finally {
      await limiter.stop();
      await server.kill();
    }
  });
});

describe("MySqlStore's credit ledger", () => {
  let db: TestDatabase;
  let store: MySqlStore;
  let ledger: CreditLedger;

  beforeAll(async () => {
    db = await freshDatabase();
    store = await MySqlStore.open(db.url);
    await store.migrate();
    ledger = store.creditLedger();
  });
  afterAll(async () => {
    await ledger?.close();
    await store?.close();
    await db?.drop();
  });

  it("loads 0 for a month never saved, and never lets a month's usage go down", async () => {
    expect(await ledger.load("org_a", "key_a", "203101")).toBe(0);
    await ledger.save([
      { organizationId: "org_a", keyId: "key_a", month: "203101", used: 10 },
      { organizationId: "org_b", keyId: "key_b", month: "203101", used: 3 },
      { organizationId: "org_a", keyId: "key_a", month: "203102", used: 1 },
    ]);
    await ledger.save([{ organizationId: "org_a", keyId: "key_a", month: "203101", used: 7 }]);
    expect(await ledger.load("org_a", "key_a", "203101")).toBe(10);
    await ledger.save([{ organizationId: "org_a", keyId: "key_a", month: "203101", used: Number.MAX_SAFE_INTEGER }]);
    expect(await ledger.load("org_a", "key_a", "203101")).toBe(Number.MAX_SAFE_INTEGER);
    expect(await ledger.load("org_b", "key_b", "203101")).toBe(3);
    expect(await ledger.load("org_a", "key_a", "203102")).toBe(1);
    // The organization is part of the row's identity: another's key of the same id has its own.
    expect(await ledger.load("org_b", "key_a", "203101")).toBe(0);
  });

  it("saves large batches of several organizations", async () => {
    const entries = Array.from({ length: 2500 }, (_, i) => ({ organizationId: `org_${i % 3}`, keyId: `key_${i}`, month: "203103", used: i }));
    await ledger.save(entries);
    expect(await ledger.load("org_0", "key_2499", "203103")).toBe(2499);
    expect(await ledger.load("org_1", "key_1", "203103")).toBe(1);
  });
});
