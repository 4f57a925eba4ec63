// Immediate revocation across instances: three servers share one MariaDB
// database and one Redis; each has its own cache and subscriber.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Role, VerifyCode } from "../../gen/apikeys/v1/apikeys_pb.js";
import { type TestDatabase, freshDatabase } from "../helpers/mysql.js";
import { TestRedis } from "../helpers/redis.js";
import { type TestServer, startServer } from "../helpers/server.js";

const owner = { userId: "u_owner", role: Role.OWNER };

async function until(check: () => boolean | Promise<boolean>, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe("revocation across instances (MariaDB + Redis)", () => {
  let db: TestDatabase;
  let redis: TestRedis;
  let a: TestServer;
  let b: TestServer;
  let c: TestServer;

  beforeAll(async () => {
    db = await freshDatabase();
    redis = await TestRedis.start();
    const env = { REDIS_URL: redis.url, CACHE_LEASE_MS: "1000" };
    // The first instance migrates; the others start against the same schema.
    a = await startServer({ databaseUrl: db.url, env });
    [b, c] = await Promise.all([startServer({ databaseUrl: db.url, env }), startServer({ databaseUrl: db.url, env })]);
    // Every instance trusts its cache once its first ping has come back.
    await until(() => [a, b, c].every((s) => s.app.cache!.isTrusted()));
  });

  afterAll(async () => {
    await Promise.all([a, b, c].map((s) => s?.stop()));
    await redis?.kill();
    await db?.drop();
  });

  it("serves repeat verifications from the cache", async () => {
    const { secret } = await a.connect.createKey({ organizationId: "org_c", actor: owner, name: "cached" });
    expect((await b.grpc.call("verifyKey", { key: secret })).valid).toBe(true);
    const hits = b.app.cache!.hits;
    expect((await b.grpc.call("verifyKey", { key: secret })).valid).toBe(true);
    expect(b.app.cache!.hits).toBe(hits + 1);
  });

  it("revoke on A: B and C reject at once", async () => {
    const { key, secret } = await a.connect.createKey({ organizationId: "org_1", actor: owner, name: "k" });
    for (const s of [a, b, c]) expect((await s.grpc.call("verifyKey", { key: secret })).valid).toBe(true);
    await a.connect.revokeKey({ organizationId: "org_1", keyId: key!.id, actor: owner });
    // Published to the three instances, A's own subscriber included, and no one else.
    expect(a.app.broadcast!.stats.lastReceivers).toBe(3);
    for (const s of [b, c, a]) {
      const res = await s.grpc.call("verifyKey", { key: secret });
      expect(res.code).toBe(VerifyCode.REVOKED);
    }
  });

  it("1,000 revoke-then-verify races: zero acceptances after RevokeKey returned", async () => {
    const servers = [a, b, c];
    let accepted = 0;
    const N = 1000;
    // Created in batches: this test is about revocation races, not create bursts.
    const keys: Awaited<ReturnType<typeof a.connect.createKey>>[] = [];
    for (let i = 0; i < N; i += 100) {
      keys.push(
        ...(await Promise.all(
          Array.from({ length: 100 }, (_, j) =>
            servers[(i + j) % 3].connect.createKey({ organizationId: "org_race", actor: owner, name: `race ${i + j}` }),
          ),
        )),
      );
    }
    // Warm every cache with every key, so a missed invalidation would show.
    await Promise.all(keys.flatMap(({ secret }) => servers.map((s) => s.grpc.call("verifyKey", { key: secret }))));
    // Run in waves of 50 concurrent races: revoke through one instance, then verify on all three.
    for (let i = 0; i < N; i += 50) {
      await Promise.all(
        keys.slice(i, i + 50).map(async ({ key, secret }, j) => {
          const origin = servers[(i + j) % 3];
          const verifying = servers.map((s) => s.grpc.call("verifyKey", { key: secret })); // racing, may see either
          await origin.connect.revokeKey({ organizationId: "org_race", keyId: key!.id, actor: owner });
          await Promise.all(verifying);
          const after = await Promise.all(servers.map((s) => s.grpc.call("verifyKey", { key: secret })));
          accepted += after.filter((r) => r.valid).length;
        }),
      );
    }
    expect(accepted).toBe(0);
  }, 120_000);

  it("a slow instance (late on its subscription) still never accepts a key after RevokeKey returned", async () => {
    const env = { REDIS_URL: redis.url, CACHE_LEASE_MS: "1000" };
    const [slow, stalled] = await Promise.all([startServer({ databaseUrl: db.url, env }), startServer({ databaseUrl: db.url, env })]);
    try {
      await until(() => slow.app.cache!.isTrusted() && stalled.app.cache!.isTrusted());
      // 200 ms behind: the revoking call waits for its ack.
      // 3 s behind, longer than lease + margin: the revoking call stops waiting, but the
      // instance's lease has run out by then, so it no longer trusts its cache.
      for (const [s, delay] of [
        [slow, 200],
        [stalled, 3000],
      ] as const) {
        const { key, secret } = await a.connect.createKey({ organizationId: "org_slow", actor: owner, name: "s" });
        expect((await s.grpc.call("verifyKey", { key: secret })).valid).toBe(true);
        expect((await s.grpc.call("verifyKey", { key: secret })).valid).toBe(true); // now cached
        s.app.broadcast!.deliveryDelayMs = delay;
        await a.connect.revokeKey({ organizationId: "org_slow", keyId: key!.id, actor: owner });
        expect((await s.grpc.call("verifyKey", { key: secret })).code).toBe(VerifyCode.REVOKED);
      }
      expect(a.app.broadcast!.stats.acksTimedOut).toBeGreaterThan(0);
    } finally {
      await Promise.all([slow.stop(), stalled.stop()]);
    }
  }, 60_000);

  it("Redis down: verification keeps working from MariaDB and never accepts a revoked key; reconnect restores caching", async () => {
    const { key, secret } = await a.connect.createKey({ organizationId: "org_f", actor: owner, name: "f" });
    const other = await a.connect.createKey({ organizationId: "org_f", actor: owner, name: "g" });
    for (const s of [a, b, c]) expect((await s.grpc.call("verifyKey", { key: secret })).valid).toBe(true);

    await redis.kill();
    // The subscriber notices the dropped connection and stops trusting its cache.
    await until(() => [a, b, c].every((s) => !s.app.cache!.isTrusted()));
    // A revocation that cannot be broadcast is stored but reported UNAVAILABLE, so the caller retries.
    await expect(a.connect.revokeKey({ organizationId: "org_f", keyId: key!.id, actor: owner })).rejects.toMatchObject({
      code: 14,
    });
    for (const s of [a, b, c]) {
      expect((await s.grpc.call("verifyKey", { key: secret })).code).toBe(VerifyCode.REVOKED);
      expect((await s.grpc.call("verifyKey", { key: other.secret })).valid).toBe(true);
    }

    await redis.restart();
    await until(() => [a, b, c].every((s) => s.app.cache!.isTrusted()), 10_000);
    // The retry now succeeds, and caching resumes.
    await a.connect.revokeKey({ organizationId: "org_f", keyId: key!.id, actor: owner });
    await b.grpc.call("verifyKey", { key: other.secret });
    const hits = b.app.cache!.hits;
    expect((await b.grpc.call("verifyKey", { key: other.secret })).valid).toBe(true);
    expect(b.app.cache!.hits).toBe(hits + 1);
  }, 60_000);
});
