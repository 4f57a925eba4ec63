// The revocation race, measured from outside: keys cached on every instance
// are revoked one after another through random instances while verification
// lanes hammer the keys being revoked on every instance. The guarantee: no
// verification that *started* after its key's RevokeKey returned is accepted.
// (One that started before may see either answer.) Every instance is reached
// through its own client, all in this process, so "started" and "returned"
// are read on one clock.
import { VerifyCode } from "../../../gen/apikeys/v1/apikeys_pb.js";
import { GRPC, Loop, codeOf, owner, pick } from "./load.js";

/** What the race needs of an instance: its name and a way to call it. */
export interface RaceTarget {
  name: string;
  verify(secret: string): Promise<{ valid: boolean; code: VerifyCode }>;
  revoke(organizationId: string, keyId: string): Promise<unknown>;
}

export interface RaceKey {
  id: string;
  secret: string;
}

export interface RaceOptions {
  organizationId: string;
  targets: RaceTarget[];
  /** Keys already cached on every instance; each is revoked once. */
  keys: RaceKey[];
  /** RevokeKeys in flight at once. */
  revokers: number;
  /** Background verification lanes, on top of the burst each RevokeKey's return fires. */
  verifiers: number;
  /**
   * Retry a RevokeKey that answered UNAVAILABLE (the change is stored, its broadcast not confirmed), as a caller
   * would, until it answers OK; the guarantee is then checked from that answer on. Default: an error.
   */
  retryUnavailable?: boolean;
}

export interface RaceResult {
  revoked: number;
  /** Verifications that started after their key's RevokeKey returned. */
  checkedAfter: number;
  /** Accepted although they started after RevokeKey returned: must be empty. */
  lateAcceptances: string[];
  /** Verifications answered VALID before the revocation returned: proof the race had something to race. */
  acceptedBefore: number;
  /** Calls that failed (anything but an answer). */
  errors: string[];
  revokeMs: number[];
  /** RevokeKeys that answered UNAVAILABLE and were retried (retryUnavailable). */
  retried: number;
  /** performance.now() when the last RevokeKey returned. */
  endedAt: number;
}

export async function raceRevocations(o: RaceOptions): Promise<RaceResult> {
  const queue = [...o.keys];
  /** Keys whose revocation has started: what the verification lanes hammer. The latest ones first. */
  const hot: RaceKey[] = [];
  /** performance.now() when each key's RevokeKey returned. */
  const returnedAt = new Map<string, number>();
  const result: RaceResult = { revoked: 0, checkedAfter: 0, lateAcceptances: [], acceptedBefore: 0, errors: [], revokeMs: [], retried: 0, endedAt: 0 };

  const check = async (target: RaceTarget, key: RaceKey) => {
    const started = performance.now();
    try {
      const res = await target.verify(key.secret);
      const returned = returnedAt.get(key.id);
      if (returned !== undefined && started > returned) {
        result.checkedAfter++;
        if (res.valid) {
          result.lateAcceptances.push(`${key.id} accepted by ${target.name} ${(started - returned).toFixed(1)} ms after RevokeKey returned`);
        }
      } else if (res.valid) result.acceptedBefore++;
      if (!res.valid && res.code !== VerifyCode.REVOKED) result.errors.push(`${key.id} answered ${VerifyCode[res.code]} on ${target.name}`);
    } catch (err) {
      result.errors.push(`VerifyKey on ${target.name}: ${codeOf(err)}`);
    }
  };

  const verifiers = new Loop(
    async () => {
      // Mostly the newest keys: those whose revocation is racing right now.
      const recent = hot.slice(-Math.max(2, o.revokers * 2));
      if (recent.length > 0) await check(pick(o.targets), pick(recent));
    },
    { concurrency: o.verifiers },
  );
  const revoker = async () => {
    for (let key = queue.shift(); key !== undefined; key = queue.shift()) {
      hot.push(key);
      const through = pick(o.targets);
      const started = performance.now();
      let answered = false;
      while (!answered) {
        try {
          await through.revoke(o.organizationId, key.id);
          answered = true;
        } catch (err) {
          if (o.retryUnavailable && codeOf(err) === GRPC.UNAVAILABLE) {
            result.retried++;
            await new Promise((r) => setTimeout(r, 50));
            continue;
          }
          result.errors.push(`RevokeKey on ${through.name}: ${codeOf(err)}`);
          break;
        }
      }
      if (!answered) continue;
      const returned = performance.now();
      result.endedAt = returned;
      returnedAt.set(key.id, returned);
      result.revokeMs.push(returned - started);
      result.revoked++;
      // The tightest race: every instance asked in the same tick RevokeKey returned.
      await Promise.all(o.targets.map((t) => check(t, key)));
    }
  };
  try {
    await Promise.all(Array.from({ length: o.revokers }, revoker));
  } finally {
    await verifiers.stop();
  }
  return result;
}

/** A race target for a TestServer-like client (connect-node, gRPC). */
export function raceTarget(
  name: string,
  client: {
    verifyKey(req: { key: string }, opts?: { timeoutMs?: number }): Promise<{ valid: boolean; code: VerifyCode }>;
    revokeKey(req: { organizationId: string; keyId: string; actor: typeof owner }, opts?: { timeoutMs?: number }): Promise<unknown>;
  },
  timeoutMs = 10_000,
): RaceTarget {
  return {
    name,
    verify: (secret) => client.verifyKey({ key: secret }, { timeoutMs }),
    revoke: (organizationId, keyId) => client.revokeKey({ organizationId, keyId, actor: owner }, { timeoutMs }),
  };
}
