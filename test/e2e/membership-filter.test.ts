// Unknown keys answered from memory (issue 23) and forged-key floods bounded
// (issue 20), on two instances sharing MariaDB and a Redis of their own.
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Role, VerifyCode } from "../../gen/apikeys/v1/apikeys_pb.js";
import { generateSecret } from "../../src/keys/key-format.js";
import { type TestDatabase, freshDatabase } from "../helpers/mysql.js";
import { TestRedis } from "../helpers/redis.js";
import { type TestServer, startServer } from "../helpers/server.js";

const owner = { userId: "u_owner", role: Role.OWNER };

async function until(check: () => boolean, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe("membership filter", () => {
  let db: TestDatabase;
  let redis: TestRedis;
  let a: TestServer;
  let b: TestServer;
  let c: TestServer;

  beforeAll(async () => {
    db = await freshDatabase();
    redis = await TestRedis.start();
    const env = { REDIS_URL: redis.url, CACHE_LEASE_MS: "1000" };
    a = await startServer({ databaseUrl: db.url, env });
    // Keys stored before B and C start reach them through the load, later ones through the broadcast.
    await a.connect.createKey({ organizationId: "org_m", actor: owner, name: "before" });
    [b, c] = await Promise.all([startServer({ databaseUrl: db.url, env }), startServer({ databaseUrl: db.url, env })]);
    await until(() => [a, b, c].every((s) => s.app.cache!.isTrusted() && s.app.membership!.ready));
  });

  afterAll(async () => {
    await Promise.all([a, b, c].map((s) => s?.stop()));
    await redis?.kill();
    await db?.drop();
  });

  it("loads every stored hash at start", () => {
    for (const s of [b, c]) expect(s.app.membership!.stats.lastLoadKeys).toBe(1);
  });

  it("a key created on one instance verifies on every other the moment CreateKey returns", async () => {
    for (let i = 0; i < 20; i++) {
      const { secret } = await a.connect.createKey({ organizationId: "org_m", actor: owner, name: `k${i}` });
      const answers = await Promise.all([b, c].map((s) => s.grpc.call("verifyKey", { key: secret })));
      expect(answers.map((r) => r.code)).toEqual([VerifyCode.VALID, VerifyCode.VALID]);
    }
  });

  it("a rotated key's new secret verifies everywhere the moment RotateKey returns", async () => {
    const { key } = await b.connect.createKey({ organizationId: "org_m", actor: owner, name: "rotated" });
    const { secret } = await b.connect.rotateKey({ organizationId: "org_m", keyId: key!.id, actor: owner });
    for (const s of [a, c]) expect((await s.grpc.call("verifyKey", { key: secret })).code).toBe(VerifyCode.VALID);
  });

  it("answers well-formed unknown keys without a lookup", async () => {
    const ruledOut = b.app.membership!.stats.ruledOut;
    const lookups = b.app.unknownBudget!.spent;
    for (let i = 0; i < 200; i++) {
      expect((await b.grpc.call("verifyKey", { key: generateSecret("sk") })).code).toBe(VerifyCode.NOT_FOUND);
    }
    const looked = b.app.unknownBudget!.spent - lookups;
    // A ~1% false-positive rate: a few may still be looked up, and are answered NOT_FOUND by the database.
    expect(looked).toBeLessThan(10);
    expect(b.app.membership!.stats.ruledOut - ruledOut).toBe(200 - looked);
  });

  it("stops using the filter when it may have missed a broadcast, and loads it again once trusted", async () => {
    b.app.cache!.distrust();
    expect(b.app.membership!.ready).toBe(false);
    const { secret } = await a.connect.createKey({ organizationId: "org_m", actor: owner, name: "while distrusted" });
    // From the database meanwhile: still found.
    expect((await b.grpc.call("verifyKey", { key: secret })).code).toBe(VerifyCode.VALID);
    await until(() => b.app.cache!.isTrusted());
    await b.grpc.call("verifyKey", { key: generateSecret("sk") });
    await until(() => b.app.membership!.ready);
    b.app.cache!.distrust();
    await until(() => b.app.cache!.isTrusted());
    await b.grpc.call("verifyKey", { key: generateSecret("sk") });
    await until(() => b.app.membership!.ready);
    expect((await b.grpc.call("verifyKey", { key: secret })).code).toBe(VerifyCode.VALID);
  });
});

describe("a flood of forged keys (no filter)", () => {
  let s: TestServer;

  beforeAll(async () => {
    s = await startServer({
      env: {
        MEMBERSHIP_FILTER: "false",
        // A long lease: on a loaded machine a late ping must not empty the cache this test looks at.
        CACHE_LEASE_MS: "60000",
        UNKNOWN_KEY_LOOKUPS_PER_SECOND: "1000",
        UNKNOWN_KEY_LOOKUPS_PER_CALLER_PER_SECOND: "20",
        NEGATIVE_CACHE_MAX_ENTRIES: "100",
        CACHE_MAX_ENTRIES: "1000",
      },
    });
  });

  afterAll(async () => {
    await s?.stop();
  });

  it("keeps real keys cached, bounds the lookups, and refuses the flooder's misses with RESOURCE_EXHAUSTED", async () => {
    const real = await Promise.all(
      Array.from({ length: 20 }, (_, i) => s.connect.createKey({ organizationId: "org_f", actor: owner, name: `real${i}` })),
    );
    for (const k of real) expect((await s.grpc.call("verifyKey", { key: k.secret })).code).toBe(VerifyCode.VALID);
    const spent = s.app.unknownBudget!.spent;
    const started = Date.now();
    let refused = 0;
    await until(() => s.app.cache!.isTrusted());
    for (let i = 0; i < 150; i++) {
      try {
        expect((await s.grpc.call("verifyKey", { key: generateSecret("sk") })).code).toBe(VerifyCode.NOT_FOUND);
      } catch (err) {
        expect((err as grpc.ServiceError).code).toBe(grpc.status.RESOURCE_EXHAUSTED);
        refused++;
      }
    }
    const seconds = (Date.now() - started) / 1000;
    const looked = s.app.unknownBudget!.spent - spent;
    // One second's burst plus the refill while the flood ran.
    expect(looked).toBeLessThanOrEqual(20 + Math.ceil(20 * seconds) + 1);
    expect(refused).toBe(150 - looked);
    expect(s.app.cache!.negativeSize).toBeLessThanOrEqual(100);
    // Every real key is still answered from the cache, forged keys notwithstanding.
    const hits = s.app.cache!.hits;
    for (const k of real) expect((await s.grpc.call("verifyKey", { key: k.secret })).code).toBe(VerifyCode.VALID);
    expect(s.app.cache!.hits - hits).toBe(real.length);
  }, 120_000);
});
