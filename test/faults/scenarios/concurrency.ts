// Concurrency: many calls at once on the same organization and the same key,
// spread over two instances sharing one database. What must hold:
// - rotations queue: exactly one secret is current afterwards (the one whose
//   preview the key shows), every other returned secret works until its grace
//   ends, or at once stops working with a grace of 0;
// - repeated revocations revoke once (one revoke time, one audit event);
// - creates never duplicate: one key per request_id, whichever retry wins,
//   and its secret is returned exactly once;
// - concurrent updates of different fields are all kept (no lost update);
// - a listing paged through during churn never shows a key twice and misses
//   no key that existed when it started.
import mysql from "mysql2/promise";
import type { RowDataPacket } from "mysql2/promise";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { KeyState, Role, VerifyCode } from "../../../gen/apikeys/v1/apikeys_pb.js";
import { SecretHasher } from "../../../src/keys/hashing.js";
import { previewOf } from "../../../src/keys/key-format.js";
import { type TestDatabase, freshDatabase } from "../../helpers/mysql.js";
import { TestRedis } from "../../helpers/redis.js";
import { TEST_PEPPER, type TestServer, startServer } from "../../helpers/server.js";
import { GRPC, Loop, codeOf, owner, pick, until } from "../support/load.js";

export interface ConcurrencyOptions {
  /** Concurrent calls on one key (rotations, revocations, updates). */
  perKey: number;
  /** Distinct request ids created at once, each sent `retries` times concurrently. */
  requestIds: number;
  retries: number;
  /** Paged walks of an organization while keys are created and revoked. */
  walks: number;
  timeoutMs: number;
}

export function concurrencySuite(o: ConcurrencyOptions): void {
  describe(`concurrency on one organization and one key (${o.perKey} at once, two instances)`, () => {
    let db: TestDatabase;
    let redis: TestRedis;
    let servers: TestServer[] = [];
    let sql: mysql.Connection;
    const clients = () => servers.map((s) => s.grpcTransportClient);

    beforeAll(async () => {
      [db, redis] = await Promise.all([freshDatabase(), TestRedis.start()]);
      const env = { REDIS_URL: redis.url };
      servers.push(await startServer({ databaseUrl: db.url, env }));
      servers.push(await startServer({ databaseUrl: db.url, env }));
      await until("both caches are trusted", () => servers.every((s) => s.app.cache!.isTrusted()), 10_000);
      sql = await mysql.createConnection(db.url);
    });

    afterAll(async () => {
      await sql?.end();
      await Promise.all(servers.map((s) => s.stop()));
      await redis?.kill();
      await db?.drop();
    });

    /** Runs `call` n times at once, alternating between the instances. */
    const burst = <T>(n: number, call: (client: ReturnType<typeof clients>[number], i: number) => Promise<T>) =>
      Promise.all(Array.from({ length: n }, (_, i) => call(clients()[i % 2], i)));
    const newKey = async (organizationId: string) => {
      const res = await clients()[0].createKey({ organizationId, actor: owner, name: "k" });
      return { id: res.key!.id, secret: res.secret, organizationId };
    };
    const verifyEverywhere = async (secret: string) => {
      const codes = await Promise.all(clients().map((c) => c.verifyKey({ key: secret })));
      return new Set(codes.map((r) => r.code));
    };

    it(
      "concurrent rotations with a grace period: one current secret, every other one valid within its grace",
      async () => {
        const key = await newKey("org_rotate");
        expect(await verifyEverywhere(key.secret)).toEqual(new Set([VerifyCode.VALID]));
        const rotations = await burst(o.perKey, (c) =>
          c.rotateKey({ organizationId: key.organizationId, keyId: key.id, actor: owner, gracePeriod: { seconds: 600n } }),
        );
        const got = await clients()[1].getKey({ organizationId: key.organizationId, keyId: key.id, actor: owner });
        const current = rotations.filter((r) => previewOf(r.secret) === got.key!.preview);
        expect(current).toHaveLength(1);
        for (const secret of [key.secret, ...rotations.map((r) => r.secret)]) {
          expect(await verifyEverywhere(secret)).toEqual(new Set([VerifyCode.VALID]));
        }
        // In the table: every secret once, and the current one is the only one without an end.
        const [rows] = await sql.query<RowDataPacket[]>("SELECT hash, expire_time FROM key_secrets WHERE key_id = ?", [key.id]);
        expect(rows).toHaveLength(o.perKey + 1);
        const open = rows.filter((r) => r.expire_time === null);
        expect(open).toHaveLength(1);
        expect(Buffer.compare(open[0].hash as Buffer, new SecretHasher(TEST_PEPPER).hash(current[0].secret))).toBe(0);
      },
      o.timeoutMs,
    );

    it(
      "concurrent rotations with no grace: exactly the current secret verifies, every other one is NOT_FOUND",
      async () => {
        const key = await newKey("org_rotate");
        const rotations = await burst(o.perKey, (c) =>
          c.rotateKey({ organizationId: key.organizationId, keyId: key.id, actor: owner, gracePeriod: { seconds: 0n } }),
        );
        const got = await clients()[0].getKey({ organizationId: key.organizationId, keyId: key.id, actor: owner });
        const outcomes = new Map<string, Set<VerifyCode>>();
        for (const r of rotations) outcomes.set(r.secret, await verifyEverywhere(r.secret));
        const valid = rotations.filter((r) => outcomes.get(r.secret)!.has(VerifyCode.VALID));
        expect(valid).toHaveLength(1);
        expect(previewOf(valid[0].secret)).toBe(got.key!.preview);
        expect(outcomes.get(valid[0].secret)).toEqual(new Set([VerifyCode.VALID]));
        for (const r of rotations) {
          if (r !== valid[0]) expect(outcomes.get(r.secret)).toEqual(new Set([VerifyCode.NOT_FOUND]));
        }
        expect(await verifyEverywhere(key.secret)).toEqual(new Set([VerifyCode.NOT_FOUND]));
      },
      o.timeoutMs,
    );

    it(
      "rotations racing a revocation: once RevokeKey returned, no secret of the key verifies",
      async () => {
        const key = await newKey("org_rotate");
        const rotations = burst(o.perKey, async (c) => {
          try {
            return (await c.rotateKey({ organizationId: key.organizationId, keyId: key.id, actor: owner, gracePeriod: { seconds: 600n } }))
              .secret;
          } catch (err) {
            // A rotation that comes after the revocation is refused.
            expect(codeOf(err)).toBe(GRPC.FAILED_PRECONDITION);
            return null;
          }
        });
        await clients()[1].revokeKey({ organizationId: key.organizationId, keyId: key.id, actor: owner });
        const secrets = [key.secret, ...(await rotations).filter((s): s is string => s !== null)];
        for (const secret of secrets) {
          const codes = await verifyEverywhere(secret);
          expect(codes.has(VerifyCode.VALID), `a secret of the revoked key verifies (${[...codes]})`).toBe(false);
        }
      },
      o.timeoutMs,
    );

    it(
      "concurrent revocations of one key revoke it once",
      async () => {
        const key = await newKey("org_revoke");
        const results = await burst(o.perKey, (c) =>
          c.revokeKey({ organizationId: key.organizationId, keyId: key.id, actor: owner, reason: "concurrent" }),
        );
        const times = new Set(results.map((r) => `${r.key!.revokeTime!.seconds}.${r.key!.revokeTime!.nanos}`));
        expect(times.size).toBe(1);
        expect(results.every((r) => r.key!.state === KeyState.REVOKED)).toBe(true);
        const [events] = await sql.query<RowDataPacket[]>(
          "SELECT COUNT(*) AS n FROM audit_events WHERE key_id = ? AND action = 'key.revoke'",
          [key.id],
        );
        expect(Number(events[0].n)).toBe(1);
        expect(await verifyEverywhere(key.secret)).toEqual(new Set([VerifyCode.REVOKED]));
      },
      o.timeoutMs,
    );

    it(
      "concurrent creates in one organization, with retries racing each other: no duplicate, one secret per key",
      async () => {
        const organizationId = "org_create";
        // A new user in a new organization: every create also records the same membership and organization.
        const actor = { userId: "u_new", role: Role.OWNER };
        const calls = await burst(o.requestIds * o.retries, (c, i) =>
          c.createKey({ organizationId, actor, name: `create ${i}`, requestId: `req-${i % o.requestIds}` }),
        );
        const plain = await burst(o.requestIds, (c, i) => c.createKey({ organizationId, actor, name: `plain ${i}` }));
        const byRequest = new Map<number, typeof calls>();
        calls.forEach((res, i) => byRequest.set(i % o.requestIds, [...(byRequest.get(i % o.requestIds) ?? []), res]));
        for (const answers of byRequest.values()) {
          expect(new Set(answers.map((a) => a.key!.id)).size).toBe(1);
          const withSecret = answers.filter((a) => a.secret !== "");
          expect(withSecret).toHaveLength(1);
          expect(await verifyEverywhere(withSecret[0].secret)).toEqual(new Set([VerifyCode.VALID]));
        }
        expect(new Set(plain.map((p) => p.key!.id)).size).toBe(o.requestIds);
        const [rows] = await sql.query<RowDataPacket[]>("SELECT COUNT(*) AS n FROM api_keys WHERE organization_id = ?", [
          organizationId,
        ]);
        expect(Number(rows[0].n)).toBe(2 * o.requestIds);
      },
      o.timeoutMs,
    );

    it(
      "concurrent updates of different fields of one key: every one is kept",
      async () => {
        const key = await newKey("org_update");
        const { organizationId, id: keyId } = key;
        for (let round = 0; round < Math.max(1, Math.floor(o.perKey / 5)); round++) {
          const expireTime = { seconds: BigInt(Math.floor(Date.now() / 1000) + 3600 + round), nanos: 0 };
          const updates = [
            { name: `name ${round}`, updateMask: { paths: ["name"] } },
            { scopes: [`scope:${round}`], updateMask: { paths: ["scopes"] } },
            { metadata: { round: String(round) }, updateMask: { paths: ["metadata"] } },
            { limits: { requestsPerDay: 1000 + round }, updateMask: { paths: ["limits"] } },
            { expireTime, updateMask: { paths: ["expire_time"] } },
          ];
          await burst(updates.length, (c, i) => c.updateKey({ organizationId, keyId, actor: owner, ...updates[i] }));
          const { key: got } = await pick(clients()).getKey({ organizationId, keyId, actor: owner });
          expect({
            name: got!.name,
            scopes: got!.scopes,
            metadata: got!.metadata,
            perDay: got!.limits?.requestsPerDay,
            expire: got!.expireTime?.seconds,
          }).toEqual({
            name: `name ${round}`,
            scopes: [`scope:${round}`],
            metadata: { round: String(round) },
            perDay: 1000 + round,
            expire: expireTime.seconds,
          });
        }
      },
      o.timeoutMs,
    );

    it(
      "listings paged through during churn show each key once and miss none that existed when they started",
      async () => {
        const organizationId = "org_churn";
        const keys = await burst(60, () => newKey(organizationId));
        const revoking = new Set<string>(); // from the moment the call is made
        const revoked = new Set<string>(); // once it has returned
        const failures: string[] = [];
        const creators = new Loop(async () => {
          try {
            keys.push(await newKey(organizationId));
          } catch (err) {
            failures.push(`CreateKey: ${codeOf(err)}`);
          }
        }, { concurrency: 2 });
        const revokers = new Loop(async () => {
          const key = pick(keys);
          revoking.add(key.id);
          try {
            await pick(clients()).revokeKey({ organizationId, keyId: key.id, actor: owner });
            revoked.add(key.id);
          } catch (err) {
            failures.push(`RevokeKey: ${codeOf(err)}`);
          }
        }, { concurrency: 2 });
        try {
          for (let walk = 0; walk < o.walks; walk++) {
            const showRevoked = walk % 2 === 0;
            const existing = new Set(keys.map((k) => k.id));
            const revokedBefore = new Set(revoked);
            const seen: string[] = [];
            let pageToken = "";
            do {
              const page = await pick(clients()).listKeys({ organizationId, actor: owner, showRevoked, pageSize: 7, pageToken });
              seen.push(...page.keys.map((k) => k.id));
              pageToken = page.nextPageToken;
            } while (pageToken !== "");
            expect(seen.length - new Set(seen).size, "keys listed twice").toBe(0);
            // Without show_revoked a key revoked during the walk may or may not be listed.
            const mustSee = [...existing].filter((id) => showRevoked || !revoking.has(id));
            expect(mustSee.filter((id) => !seen.includes(id)), "keys missing from the walk").toEqual([]);
            if (!showRevoked) expect(seen.filter((id) => revokedBefore.has(id)), "keys revoked before the walk").toEqual([]);
          }
        } finally {
          await Promise.all([creators.stop(), revokers.stop()]);
        }
        expect(failures).toEqual([]);
        expect(revoked.size).toBeGreaterThan(0);
      },
      o.timeoutMs,
    );
  });
}
