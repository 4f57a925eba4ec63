// MYSQL_REPLICA_URL against a real MariaDB replica (a private primary and
// replica, GTID replication, started here): cold verifications and listings
// read the replica, and replication lag (the replica's SQL thread stopped)
// never makes a key revoked on the primary verify as valid, nor hides a key
// this instance just created from its listing.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Role, VerifyCode } from "../../gen/apikeys/v1/apikeys_pb.js";
import type { MySqlStore } from "../../src/store/mysql-store.js";
import { ReplicatedMariadb } from "../../bench/mariadb-pair.js";
import { TestRedis } from "../helpers/redis.js";
import { type TestServer, startServer } from "../helpers/server.js";

const owner = { userId: "u_owner", role: Role.OWNER };
const ORG = "org_replica";

async function until(check: () => boolean | Promise<boolean>, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe("read replica (MariaDB primary + replica, replication paused on demand)", () => {
  let dbs: ReplicatedMariadb;
  let redis: TestRedis;
  let a: TestServer;
  let b: TestServer;
  const reads = (s: TestServer) => (s.app.store as MySqlStore).replicaReads;

  beforeAll(async () => {
    [dbs, redis] = await Promise.all([ReplicatedMariadb.start(), TestRedis.start()]);
    const env = { REDIS_URL: redis.url, MYSQL_REPLICA_URL: dbs.replica.url("apikeys"), CACHE_LEASE_MS: "1000" };
    a = await startServer({ databaseUrl: dbs.primary.url("apikeys"), env });
    b = await startServer({ databaseUrl: dbs.primary.url("apikeys"), env });
    await until(() => [a, b].every((s) => s.app.cache!.isTrusted()));
    await dbs.caughtUp();
  }, 180_000);

  afterAll(async () => {
    await Promise.all([a, b].map((s) => s?.stop()));
    await Promise.all([dbs?.stop(), redis?.kill()]);
  });

  it("serves cold verifications from the replica once it has the key", async () => {
    const created = await Promise.all(Array.from({ length: 5 }, () => a.connect.createKey({ organizationId: ORG, actor: owner })));
    await dbs.caughtUp();
    const before = { ...reads(b) };
    for (const { secret } of created) expect((await b.grpc.call("verifyKey", { key: secret })).valid).toBe(true);
    expect(reads(b).replica - before.replica).toBe(5);
  });

  it("never verifies a key revoked on the primary as valid while the replica lags, and catches up after", async () => {
    const keys = await Promise.all(Array.from({ length: 3 }, () => a.connect.createKey({ organizationId: ORG, actor: owner })));
    await dbs.caughtUp();
    // Cached on both instances, from the replica.
    for (const { secret } of keys) for (const s of [a, b]) expect((await s.grpc.call("verifyKey", { key: secret })).valid).toBe(true);
    await dbs.pause();
    try {
      for (const { key, secret } of keys) {
        await a.connect.revokeKey({ organizationId: ORG, keyId: key!.id, actor: owner });
        // The replica has not applied the revocation: a read of it alone would say valid.
        const [row] = await dbs.replica.query("SELECT revoke_time FROM apikeys.api_keys WHERE organization_id = ? AND id = ?", [ORG, key!.id]);
        expect(row.revoke_time).toBeNull();
        for (const s of [b, a]) {
          const res = await s.grpc.call("verifyKey", { key: secret });
          expect(res.valid).toBe(false);
          expect(res.code).toBe(VerifyCode.REVOKED);
        }
      }
      // And again, cold: the answer cached above was the primary's.
      for (const s of [a, b]) s.app.cache!.distrust();
      await until(() => [a, b].every((s) => s.app.cache!.isTrusted()));
      for (const { secret } of keys) expect((await b.grpc.call("verifyKey", { key: secret })).code).toBe(VerifyCode.REVOKED);
    } finally {
      await dbs.resume();
    }
    await dbs.caughtUp();
    const fresh = await a.connect.createKey({ organizationId: ORG, actor: owner });
    await dbs.caughtUp();
    const before = { ...reads(b) };
    expect((await b.grpc.call("verifyKey", { key: fresh.secret })).valid).toBe(true);
    expect(reads(b).replica - before.replica).toBe(1);
  }, 60_000);

  it("lists a key this instance just created while the replica lags, and answers a key the replica lacks from the primary", async () => {
    await dbs.pause();
    try {
      const { key, secret } = await a.connect.createKey({ organizationId: ORG, actor: owner, name: "made during lag" });
      const listed = await a.connect.listKeys({ organizationId: ORG, actor: owner, pageSize: 1 });
      expect(listed.keys.map((k) => k.id)).toEqual([key!.id]);
      // Not on the replica yet: b asks the primary rather than caching "not found".
      expect((await b.grpc.call("verifyKey", { key: secret })).valid).toBe(true);
    } finally {
      await dbs.resume();
    }
  }, 60_000);
});
