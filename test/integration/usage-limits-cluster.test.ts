// Usage limits through VerifyKey on two instances sharing one MariaDB database
// and a real Redis Cluster (three masters, one replica each), each instance
// given different seed nodes: limits exact across instances, credits that
// survive the cluster losing its counters, and a master killed mid-traffic
// (limited keys UNAVAILABLE while its replica is promoted, exact after).
import * as grpc from "@grpc/grpc-js";
import mysql, { type RowDataPacket } from "mysql2/promise";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Role, VerifyCode, type VerifyKeyResponse } from "../../gen/apikeys/v1/apikeys_pb.js";
import { COUNTER_KEYS } from "../../src/limits/redis-usage-limiter.js";
import { type TestDatabase, freshDatabase } from "../helpers/mysql.js";
import { TestRedisCluster } from "../helpers/redis-cluster.js";
import { type TestServer, startServer } from "../helpers/server.js";

const owner = { userId: "u_owner", role: Role.OWNER };
const ORG = "org_cluster_limits";
/** The frozen clock's month. */
const MONTH = "203101";

describe("usage limits across instances on a Redis Cluster (MariaDB + 3 masters, 3 replicas)", () => {
  let db: TestDatabase;
  let cluster: TestRedisCluster;
  let a: TestServer;
  let b: TestServer;
  /** 2031-01-31 23:50 UTC, frozen. */
  const now = () => Date.UTC(2031, 0, 31, 23, 50, 0);

  async function createKey(limits: { requestsPerMinute?: number; monthlyCredits?: bigint }) {
    const res = await a.connect.createKey({ organizationId: ORG, actor: owner, name: "limited", limits });
    return { id: res.key!.id, secret: res.secret };
  }

  function parallel(secret: string, n: number, cost = 0): Promise<VerifyKeyResponse[]> {
    return Promise.all(Array.from({ length: n }, (_, i) => (i % 2 === 0 ? a : b).grpc.call("verifyKey", { key: secret, cost })));
  }

  async function ledgerUsed(keyId: string): Promise<number[]> {
    const conn = await mysql.createConnection(db.url);
    try {
      const [rows] = await conn.query<RowDataPacket[]>("SELECT used FROM credit_usage WHERE key_id = ?", [keyId]);
      return rows.map((r) => Number(r.used));
    } finally {
      await conn.end();
    }
  }

  beforeAll(async () => {
    [db, cluster] = await Promise.all([freshDatabase(), TestRedisCluster.start({ replicas: 1 })]);
    const seeds = cluster.seeds.split(",");
    // Flushes only when a test asks (and on stop), so what reaches MySQL is known.
    const env = (nodes: string[]) => ({ REDIS_CLUSTER_NODES: nodes.join(","), CREDIT_FLUSH_SECONDS: "3600" });
    a = await startServer({ databaseUrl: db.url, env: env(seeds.slice(0, 3)), now });
    b = await startServer({ databaseUrl: db.url, env: env(seeds.slice(3)), now });
  });

  afterAll(async () => {
    await Promise.all([a, b].map((s) => s?.stop()));
    await cluster?.stop();
    await db?.drop();
  });

  it("is exact across instances for keys on every master: 200 verifications against 50 a minute or 40 credits", async () => {
    const keys = await Promise.all(Array.from({ length: 6 }, () => createKey({ requestsPerMinute: 50, monthlyCredits: 40n })));
    const masters = new Set(await Promise.all(keys.map((k) => cluster.masterFor(COUNTER_KEYS.credits(k.id, MONTH)))));
    expect(masters.size).toBeGreaterThan(1);
    for (const [i, key] of keys.entries()) {
      const results = await parallel(key.secret, 200, i % 2);
      const valid = results.filter((r) => r.valid);
      // Cost 1: the 40 credits run out first; cost 0: the 50 requests a minute.
      expect(valid).toHaveLength(i % 2 === 1 ? 40 : 50);
      const rejected = results.filter((r) => !r.valid).map((r) => r.code);
      expect(new Set(rejected)).toEqual(new Set([i % 2 === 1 ? VerifyCode.USAGE_EXCEEDED : VerifyCode.RATE_LIMITED]));
    }
  });

  it("credits survive the cluster losing its counters: reseeded from MySQL", async () => {
    const key = await createKey({ monthlyCredits: 100n });
    expect((await a.grpc.call("verifyKey", { key: key.secret, cost: 10 })).remainingCredits).toBe(90n);
    expect((await b.grpc.call("verifyKey", { key: key.secret, cost: 20 })).remainingCredits).toBe(70n);
    await Promise.all([a.app.limiter.flush(), b.app.limiter.flush()]);
    expect(await ledgerUsed(key.id)).toEqual([30]);
    await cluster.flushAll();
    expect(await cluster.command(await cluster.masterFor(COUNTER_KEYS.credits(key.id, MONTH)), "EXISTS", COUNTER_KEYS.credits(key.id, MONTH))).toBe(0);
    expect((await b.grpc.call("verifyKey", { key: key.secret, cost: 5 })).remainingCredits).toBe(65n);
    expect((await a.grpc.call("verifyKey", { key: key.secret, cost: 0 })).remainingCredits).toBe(65n);
  });

  it("a master killed: its keys' limits fail closed with UNAVAILABLE until the replica is promoted, then count on exactly", async () => {
    const key = await createKey({ requestsPerMinute: 10_000, monthlyCredits: 1000n });
    const unlimited = await createKey({});
    expect((await a.grpc.call("verifyKey", { key: key.secret, cost: 100 })).remainingCredits).toBe(900n);
    const counter = COUNTER_KEYS.credits(key.id, MONTH);
    const slot = await cluster.slotOf(counter);
    const master = await cluster.masterOfSlot(slot);
    // What the replica has when its master dies: everything acknowledged so far.
    expect(await cluster.command(master, "WAIT", 1, 2000)).toBe(1);

    await cluster.kill(master);
    let promoted = false;
    const promotion = cluster.waitForPromotion(slot, master).finally(() => {
      promoted = true;
    });
    let valid = 0;
    let unavailable = 0;
    let slowest = 0;
    for (let i = 0; !promoted || valid < 4; i++) {
      const s = i % 2 === 0 ? a : b;
      const started = Date.now();
      const res = await s.grpc.call("verifyKey", { key: key.secret, cost: 1 }).catch((e: grpc.ServiceError) => e);
      slowest = Math.max(slowest, Date.now() - started);
      if (res instanceof Error) {
        expect(res.code).toBe(grpc.status.UNAVAILABLE);
        unavailable++;
      } else {
        expect(res.code).toBe(VerifyCode.VALID);
        valid++;
      }
      // A key without limits needs no Redis at all: it verifies throughout.
      expect((await s.grpc.call("verifyKey", { key: unlimited.secret })).code).toBe(VerifyCode.VALID);
      if (i > 2000) throw new Error("the failover did not end");
    }
    await promotion;
    // The cluster was down for a while (no coverage of the dead master's slots): that was refused, not guessed.
    expect(unavailable).toBeGreaterThan(0);
    // Failing closed is fast: no call waited out the failover (~2 s), each ended within the command timeout (1 s).
    expect(slowest).toBeLessThan(1500);
    // Every admitted call counted once, every refused one not at all, on the promoted replica.
    expect((await a.grpc.call("verifyKey", { key: key.secret, cost: 0 })).remainingCredits).toBe(BigInt(900 - valid));
    expect((await b.grpc.call("verifyKey", { key: key.secret, cost: 0 })).remainingCredits).toBe(BigInt(900 - valid));
    await Promise.all([a.app.limiter.flush(), b.app.limiter.flush()]);
    expect(await ledgerUsed(key.id)).toEqual([100 + valid]);
  });
});
