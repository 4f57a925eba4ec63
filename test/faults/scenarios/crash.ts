// Crash mid-write: the service runs as its own process (src/main.ts) and is
// killed with SIGKILL during a burst of CreateKey and RevokeKey calls, then
// started again on the same database. What must hold after every restart:
// - every acknowledged write is there: created keys exist and verify, keys
//   whose revocation was acknowledged are revoked;
// - no half-written key: every key has its secret, its organization and its
//   audit event, and no secret or event lacks its key
//   (test/faults/support/consistency.ts);
// - retrying a CreateKey whose answer was lost, with its request_id, is safe:
//   one key per request_id, never two.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { KeyState, VerifyCode } from "../../../gen/apikeys/v1/apikeys_pb.js";
import { type TestDatabase, freshDatabase } from "../../helpers/mysql.js";
import { TestRedis } from "../../helpers/redis.js";
import { type ChildServer, startChildServer } from "../support/child-server.js";
import { halfWrittenKeys } from "../support/consistency.js";
import { owner } from "../support/load.js";

export interface CrashOptions {
  crashes: number;
  /** Calls in flight at once during a burst. */
  concurrency: number;
  /** The kill comes after this many acknowledged calls in the burst (so with `concurrency` calls in flight). */
  killAfter: number;
  timeoutMs: number;
}

const ORG = "org_crash";

interface Created {
  requestId: string;
  id: string;
  /** Empty when the key was found by a retry: the secret was in the lost answer. */
  secret: string;
}

export function crashSuite(o: CrashOptions): void {
  describe(`crash mid-write (kill -9 during a burst of CreateKey/RevokeKey, ${o.crashes}×)`, () => {
    let db: TestDatabase;
    let redis: TestRedis;
    let server: ChildServer | null = null;

    beforeAll(async () => {
      [db, redis] = await Promise.all([freshDatabase(), TestRedis.start()]);
    });

    afterAll(async () => {
      await server?.kill();
      await redis?.kill();
      await db?.drop();
    });

    it(
      "after every restart, acknowledged writes are all there, nothing is half-written, and retries are safe",
      async () => {
        const env = { MYSQL_URL: db.url, REDIS_URL: redis.url };
        const created = new Map<string, Created>(); // by request id
        const lostCreates = new Set<string>(); // request ids whose answer never came
        const revoked = new Set<string>(); // key ids, acknowledged
        const maybeRevoked = new Set<string>(); // key ids, answer lost
        const revoking = new Set<string>();
        let serial = 0;
        server = await startChildServer(env);

        for (let crash = 0; crash < o.crashes; crash++) {
          const client = server.client;
          let acks = 0;
          let killed = false;
          let kill!: () => void;
          const killTime = new Promise<void>((resolve) => (kill = resolve));
          const lane = async () => {
            while (!killed) {
              const candidates = [...created.values()].filter((k) => !revoked.has(k.id) && !revoking.has(k.id));
              if (candidates.length > 0 && Math.random() < 0.3) {
                const { id } = candidates[Math.floor(Math.random() * candidates.length)];
                revoking.add(id);
                try {
                  await client.revokeKey({ organizationId: ORG, keyId: id, actor: owner, reason: "crash test" });
                  revoked.add(id);
                  maybeRevoked.delete(id);
                } catch {
                  maybeRevoked.add(id);
                } finally {
                  revoking.delete(id);
                }
              } else {
                const requestId = `crash-${++serial}`;
                try {
                  const res = await client.createKey({ organizationId: ORG, actor: owner, name: requestId, requestId });
                  created.set(requestId, { requestId, id: res.key!.id, secret: res.secret });
                } catch {
                  lostCreates.add(requestId);
                }
              }
              if (++acks === o.killAfter) kill();
            }
          };
          const lanes = Array.from({ length: o.concurrency }, lane);
          await killTime;
          killed = true;
          await server.kill();
          await Promise.all(lanes);
          const lost = lostCreates.size;

          server = await startChildServer(env);
          const client2 = server.client;

          // Retried with its request id, a lost create yields exactly one key: the one written
          // before the crash (no secret this time), or a new one.
          for (const requestId of lostCreates) {
            const res = await client2.createKey({ organizationId: ORG, actor: owner, name: requestId, requestId });
            created.set(requestId, { requestId, id: res.key!.id, secret: res.secret });
          }
          lostCreates.clear();
          const keys = [...created.values()];
          expect(new Set(keys.map((k) => k.id)).size).toBe(keys.length);

          const problems: string[] = [];
          for (const key of keys) {
            const got = await client2.getKey({ organizationId: ORG, keyId: key.id, actor: owner });
            const isRevoked = got.key!.state === KeyState.REVOKED;
            if (revoked.has(key.id) && !isRevoked) problems.push(`${key.id}: acknowledged revoke lost`);
            if (!revoked.has(key.id) && !maybeRevoked.has(key.id) && isRevoked) problems.push(`${key.id}: revoked, but never asked`);
            if (key.secret !== "") {
              const res = await client2.verifyKey({ key: key.secret });
              const expected = isRevoked ? VerifyCode.REVOKED : VerifyCode.VALID;
              if (res.code !== expected) problems.push(`${key.id}: verifies ${VerifyCode[res.code]}, expected ${VerifyCode[expected]}`);
            }
          }
          expect(problems).toEqual([]);
          let listed = 0;
          let pageToken = "";
          do {
            const page = await client2.listKeys({ organizationId: ORG, actor: owner, showRevoked: true, pageSize: 1000, pageToken });
            listed += page.keys.length;
            pageToken = page.nextPageToken;
          } while (pageToken !== "");
          expect(listed, "keys in the organization: one per request id").toBe(keys.length);
          expect(await halfWrittenKeys(db.url)).toEqual([]);
          console.log(
            `[crash] ${crash + 1}: killed after ${o.killAfter} answers with ${o.concurrency} calls in flight; ` +
              `${lost} lost answers retried; ${keys.length} keys, ${revoked.size} acknowledged revocations, all intact`,
          );
        }
      },
      o.timeoutMs,
    );
  });
}
