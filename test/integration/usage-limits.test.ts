// Usage limits through VerifyKey on two instances sharing one MariaDB database
// and one (private, killable) Redis, with a shared injected clock.
import * as grpc from "@grpc/grpc-js";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { Redis } from "ioredis";
import mysql, { type RowDataPacket } from "mysql2/promise";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Role, VerifyCode, type VerifyKeyResponse } from "../../gen/apikeys/v1/apikeys_pb.js";
import { type TestDatabase, freshDatabase } from "../helpers/mysql.js";
import { TestRedis } from "../helpers/redis.js";
import { type TestServer, startServer } from "../helpers/server.js";

const owner = { userId: "u_owner", role: Role.OWNER };
const ORG = "org_limits";
const MINUTE = 60_000;

describe("usage limits across instances (MariaDB + Redis)", () => {
  let db: TestDatabase;
  let redis: TestRedis;
  let a: TestServer;
  let b: TestServer;
  /** 2031-01-31 23:50 UTC, frozen: only the tests move it. */
  let clock = Date.UTC(2031, 0, 31, 23, 50, 0);
  const now = () => clock;

  async function createKey(limits: { requestsPerMinute?: number; requestsPerDay?: number; monthlyCredits?: bigint }, metadata = {}) {
    const res = await a.connect.createKey({ organizationId: ORG, actor: owner, name: "limited", limits, metadata });
    return { id: res.key!.id, secret: res.secret };
  }

  /** Verifies on a and b alternately, all at once. */
  function parallel(secret: string, n: number, cost = 0): Promise<VerifyKeyResponse[]> {
    return Promise.all(Array.from({ length: n }, (_, i) => (i % 2 === 0 ? a : b).grpc.call("verifyKey", { key: secret, cost })));
  }

  beforeAll(async () => {
    db = await freshDatabase();
    redis = await TestRedis.start();
    // Flushes only when a test asks (and on stop), so what reaches MySQL is known.
    const env = { REDIS_URL: redis.url, CREDIT_FLUSH_SECONDS: "3600" };
    a = await startServer({ databaseUrl: db.url, env, now });
    b = await startServer({ databaseUrl: db.url, env, now });
  });

  afterAll(async () => {
    await Promise.all([a, b].map((s) => s?.stop()));
    await redis?.kill();
    await db?.drop();
  });

  it("500 parallel verifications on two instances against 100 per minute: exactly 100 valid", async () => {
    const { secret } = await createKey({ requestsPerMinute: 100 });
    const results = await parallel(secret, 500);
    const valid = results.filter((r) => r.valid);
    expect(valid).toHaveLength(100);
    expect(new Set(valid.map((r) => r.rateLimit!.remaining)).size).toBe(100);
    const limited = results.filter((r) => !r.valid);
    expect(limited.every((r) => r.code === VerifyCode.RATE_LIMITED)).toBe(true);
    for (const r of limited) {
      expect(r.rateLimit?.limit).toBe(100);
      expect(r.rateLimit?.remaining).toBe(0);
      expect(timestampMs(r.rateLimit!.resetTime!)).toBe(clock + MINUTE);
      expect(r.key?.id).toBeTruthy();
      expect(r.remainingCredits).toBeUndefined();
    }

    // The next minute window starts afresh, on both instances.
    clock += MINUTE;
    const next = await a.grpc.call("verifyKey", { key: secret });
    expect(next.code).toBe(VerifyCode.VALID);
    expect(next.rateLimit?.remaining).toBe(99);
    expect((await b.grpc.call("verifyKey", { key: secret })).rateLimit?.remaining).toBe(98);
  });

  it("consumes credits by cost exactly under concurrency, never below zero", async () => {
    const { secret } = await createKey({ monthlyCredits: 1000n });
    const results = await parallel(secret, 300, 7);
    const valid = results.filter((r) => r.valid);
    expect(valid).toHaveLength(142); // 142 × 7 = 994
    expect(new Set(valid.map((r) => r.remainingCredits)).size).toBe(142);
    expect(results.every((r) => r.remainingCredits! >= 0n)).toBe(true);
    expect(results.filter((r) => !r.valid).every((r) => r.code === VerifyCode.USAGE_EXCEEDED && r.remainingCredits === 6n)).toBe(true);
    const left = await b.grpc.call("verifyKey", { key: secret, cost: 0 });
    expect(left.valid).toBe(true);
    expect(left.remainingCredits).toBe(6n);
  });

  it("refills credits when the UTC month changes", async () => {
    const { secret } = await createKey({ monthlyCredits: 10n });
    expect((await a.grpc.call("verifyKey", { key: secret, cost: 10 })).remainingCredits).toBe(0n);
    const out = await b.grpc.call("verifyKey", { key: secret, cost: 1 });
    expect(out.code).toBe(VerifyCode.USAGE_EXCEEDED);
    expect(out.valid).toBe(false);
    clock = Date.UTC(2031, 1, 1, 0, 0, 5);
    const february = await b.grpc.call("verifyKey", { key: secret, cost: 1 });
    expect(february.code).toBe(VerifyCode.VALID);
    expect(february.remainingCredits).toBe(9n);
  });

  it("applies UpdateKey's new limits at once on every instance; the window's count survives", async () => {
    const { id, secret } = await createKey({ requestsPerMinute: 2, monthlyCredits: 100n });
    await parallel(secret, 2, 1);
    expect((await b.grpc.call("verifyKey", { key: secret })).code).toBe(VerifyCode.RATE_LIMITED);
    await a.connect.updateKey({
      organizationId: ORG,
      keyId: id,
      actor: owner,
      updateMask: { paths: ["limits"] },
      limits: { requestsPerMinute: 5, monthlyCredits: 100n },
    });
    const res = await b.grpc.call("verifyKey", { key: secret });
    expect(res.code).toBe(VerifyCode.VALID);
    expect(res.rateLimit).toMatchObject({ limit: 5, remaining: 2 });
    expect(res.remainingCredits).toBe(98n);
    // Limits removed: nothing is enforced or reported any more.
    await a.connect.updateKey({ organizationId: ORG, keyId: id, actor: owner, updateMask: { paths: ["limits"] } });
    const unlimited = await parallel(secret, 10, 1);
    expect(unlimited.every((r) => r.valid && r.rateLimit === undefined && r.remainingCredits === undefined)).toBe(true);
  });

  it('answers "who am I" with cost 0: tier, credits left, allowance, limits, created and last-used times', async () => {
    const { secret } = await createKey({ requestsPerMinute: 60, requestsPerDay: 10_000, monthlyCredits: 5000n }, { tier: "pro" });
    await a.grpc.call("verifyKey", { key: secret, cost: 25 });
    await a.app.lastUsed.flush();
    // As a gateway or curl would call it: Connect JSON on the HTTP port.
    const res = await fetch(`http://127.0.0.1:${b.httpPort}/apikeys.v1.ApiKeyService/VerifyKey`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ key: secret, cost: 0 }),
    });
    const body = await res.json();
    expect(body).toMatchObject({
      valid: true,
      code: "VERIFY_CODE_VALID",
      remainingCredits: "4975",
      rateLimit: { limit: 60, remaining: 58 },
      key: {
        metadata: { tier: "pro" },
        limits: { requestsPerMinute: 60, requestsPerDay: 10000, monthlyCredits: "5000" },
        createTime: new Date(Date.UTC(2031, 1, 1, 0, 0, 5)).toISOString().replace(".000Z", "Z"),
        lastUsedTime: expect.any(String),
      },
    });
  });

  it("Redis restart: flushed credits stay used; while it is down limited keys are UNAVAILABLE, unlimited keys verify", async () => {
    const limited = await createKey({ requestsPerMinute: 1000, monthlyCredits: 100n });
    const unlimited = await createKey({});
    expect((await a.grpc.call("verifyKey", { key: limited.secret, cost: 10 })).remainingCredits).toBe(90n);
    expect((await b.grpc.call("verifyKey", { key: limited.secret, cost: 20 })).remainingCredits).toBe(70n);
    await Promise.all([a.app.limiter.flush(), b.app.limiter.flush()]);
    const conn = await mysql.createConnection(db.url);
    try {
      const [rows] = await conn.query<RowDataPacket[]>("SELECT used FROM credit_usage WHERE key_id = ?", [limited.id]);
      expect(rows.map((r) => Number(r.used))).toEqual([30]);
    } finally {
      await conn.end();
    }
    // Consumed after the last flush: this is what a Redis data loss can cost (see docs/usage-limits.md).
    expect((await a.grpc.call("verifyKey", { key: limited.secret, cost: 5 })).remainingCredits).toBe(65n);
    expect((await a.grpc.call("verifyKey", { key: unlimited.secret })).valid).toBe(true);
    const probe = new Redis(redis.url);
    expect(await probe.keys(`*{${unlimited.id}}*`)).toEqual([]);
    probe.disconnect();

    await redis.kill();
    for (const s of [a, b]) {
      const err = (await s.grpc.call("verifyKey", { key: limited.secret, cost: 1 }).catch((e: unknown) => e)) as grpc.ServiceError;
      expect(err.code).toBe(grpc.status.UNAVAILABLE);
      const ok = await s.grpc.call("verifyKey", { key: unlimited.secret });
      expect(ok.code).toBe(VerifyCode.VALID);
    }

    await redis.restart();
    for (const s of [a, b]) {
      const deadline = Date.now() + 10_000;
      for (;;) {
        const res = await s.grpc.call("verifyKey", { key: limited.secret, cost: 0 }).catch((e: grpc.ServiceError) => e);
        if (!(res instanceof Error)) {
          expect(res.remainingCredits).toBe(70n);
          break;
        }
        expect(res.code).toBe(grpc.status.UNAVAILABLE);
        if (Date.now() > deadline) throw res;
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  });
});
