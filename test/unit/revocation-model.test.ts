// The revocation protocol itself, model-checked: fast-check's scheduler runs
// the real RedisBroadcast and VerifyCache of three instances over the
// in-memory pub/sub (test/helpers/memory-pubsub.ts, which keeps Redis's one
// promise: each connection's messages in server order) on a fake monotonic
// clock, and interleaves in adversarial orders every step that takes time:
// publishes reaching the server and their replies, each delivery, subscribe
// confirmations, noticing a cut subscription, timers (pings, deadlines) firing
// late, instances stalling, database reads of cache loads racing the commit
// of a revocation, failed publishes, and replays of anything published so far.
//
// The property (the service's promise): no verification that starts after
// invalidate() resolved is answered from a stale cache entry. Verifications
// that load from the store cannot break it here (the revocation is committed
// before invalidate() is called), so every violation is a cache hit.
import { VerifyCode } from "../../gen/apikeys/v1/apikeys_pb.js";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import type { MonotonicClock } from "../../src/broadcast/pubsub.js";
import { RedisBroadcast } from "../../src/broadcast/redis-broadcast.js";
import { VerifyCache, buildEntry, isKnown } from "../../src/keys/verify-cache.js";
import { createLogger } from "../../src/logger.js";
import { MemoryBroker, type MemoryPubSub } from "../helpers/memory-pubsub.js";
import { T0, keyRecord } from "../helpers/records.js";
import { Role } from "../../gen/apikeys/v1/apikeys_pb.js";

// Two instances find violations in far fewer runs than three (no third one whose ack hides a mistake);
// MODEL_INSTANCES=3 MODEL_RUNS=5000 for a longer search.
const INSTANCES = Number(process.env.MODEL_INSTANCES ?? 2);
const KEYS = 5;
const LEASE = 100;
const PING = 30;
const MARGIN = 20;
const PEPPER = "model-test-pepper-0123456789";

type Command =
  | { t: "step"; n: number }
  | { t: "advance"; ms: number }
  | { t: "timers"; i: number }
  | { t: "revoke"; i: number; k: number }
  | { t: "verify"; i: number; k: number }
  | { t: "cut"; i: number }
  | { t: "publishFails"; i: number; on: boolean }
  | { t: "stall"; i: number; on: boolean }
  | { t: "replay"; j: number };

const command: fc.Arbitrary<Command> = fc.oneof(
  { arbitrary: fc.record({ t: fc.constant("step" as const), n: fc.integer({ min: 1, max: 8 }) }), weight: 8 },
  { arbitrary: fc.record({ t: fc.constant("advance" as const), ms: fc.integer({ min: 1, max: 80 }) }), weight: 4 },
  { arbitrary: fc.record({ t: fc.constant("timers" as const), i: fc.nat(INSTANCES - 1) }), weight: 4 },
  { arbitrary: fc.record({ t: fc.constant("revoke" as const), i: fc.nat(INSTANCES - 1), k: fc.nat(KEYS - 1) }), weight: 2 },
  { arbitrary: fc.record({ t: fc.constant("verify" as const), i: fc.nat(INSTANCES - 1), k: fc.nat(KEYS - 1) }), weight: 8 },
  { arbitrary: fc.record({ t: fc.constant("cut" as const), i: fc.nat(INSTANCES - 1) }), weight: 1 },
  { arbitrary: fc.record({ t: fc.constant("publishFails" as const), i: fc.nat(INSTANCES - 1), on: fc.boolean() }), weight: 1 },
  { arbitrary: fc.record({ t: fc.constant("stall" as const), i: fc.nat(INSTANCES - 1), on: fc.boolean() }), weight: 1 },
  { arbitrary: fc.record({ t: fc.constant("replay" as const), j: fc.nat(200) }), weight: 1 },
);

/** One instance's view of the shared monotonic time, with timers that fire only when the model says so (late, if it likes). */
class ModelClock implements MonotonicClock {
  private readonly timers = new Map<number, { at: number; fn: () => void }>();
  private next = 0;

  constructor(private readonly world: { t: number }) {}

  now = (): number => this.world.t;

  setTimeout(fn: () => void, ms: number): unknown {
    this.timers.set(++this.next, { at: this.world.t + ms, fn });
    return this.next;
  }

  clearTimeout(handle: unknown): void {
    this.timers.delete(handle as number);
  }

  fireDue(): void {
    const due = [...this.timers].filter(([, t]) => t.at <= this.world.t).sort((a, b) => a[1].at - b[1].at);
    for (const [h, t] of due) if (this.timers.delete(h)) t.fn();
  }
}

function entry(k: number, revoked: boolean) {
  const key = keyRecord({ id: `key_${k}`, organizationId: "org_m", createdBy: "u_m", revokeTime: revoked ? T0 : null });
  return buildEntry({ key, secretExpireTime: null, memberRole: Role.OWNER, orgEnabled: true }, T0);
}

async function run(s: fc.Scheduler, commands: Command[]): Promise<string[]> {
  const world = { t: 1000 };
  const stalled = new Set<string>();
  const defer = (task: () => void, label: string) => {
    const owner = label.split(" ")[0];
    const attempt = (): void => {
      // A stalled process does nothing: its part of the task waits until it resumes (the server's part would not,
      // but a stalled client has not sent anything yet either).
      if (stalled.has(owner)) void s.schedule(Promise.resolve(), `${label} (after stall)`).then(attempt);
      else task();
    };
    void s.schedule(Promise.resolve(), label).then(attempt);
  };
  const broker = new MemoryBroker(defer);
  const logger = createLogger("silent");
  const committed = Array.from({ length: KEYS }, () => false);
  const settled = Array.from({ length: KEYS }, () => false);
  const violations: string[] = [];
  const nodes = Array.from({ length: INSTANCES }, (_, i) => {
    const clock = new ModelClock(world);
    const cache = new VerifyCache({ maxEntries: 100, ttlMs: 1e12, negativeTtlMs: 1e12, monotonicNow: clock.now });
    const pubsub: MemoryPubSub = broker.connect(`n${i}`);
    const broadcast = new RedisBroadcast({ pubsub, cache, logger, peppers: [PEPPER], clock, leaseMs: LEASE, pingIntervalMs: PING, marginMs: MARGIN });
    return { name: `n${i}`, clock, cache, pubsub, broadcast };
  });

  const verify = (i: number, k: number, why: string) => {
    const node = nodes[i];
    if (stalled.has(node.name)) return;
    const mustSeeRevoked = settled[k];
    const hit = node.cache.get(`h${k}`, T0);
    if (hit !== undefined) {
      if (mustSeeRevoked && isKnown(hit) && hit.answer.code === VerifyCode.VALID) {
        violations.push(`${why}: ${node.name} accepted key ${k} from its cache after its revocation resolved (t=${world.t})`);
      }
      return;
    }
    // A load: read the store at some point, populate at a later one (unless an invalidation came in between).
    const generation = node.cache.generation;
    defer(() => {
      const revoked = committed[k];
      defer(() => node.cache.set(`h${k}`, entry(k, revoked), generation, T0), `${node.name} load done`);
    }, `${node.name} load read`);
  };

  const drive = async (done: () => boolean, limit: number) => {
    for (let i = 0; i < limit && !done(); i++) {
      if (s.count() > 0) await s.waitOne();
      else {
        world.t += 5;
        for (const n of nodes) n.clock.fireDue();
        await Promise.resolve();
      }
    }
  };

  let started = false;
  void Promise.allSettled(nodes.map((n) => n.broadcast.start())).then(() => (started = true));
  await drive(() => started, 1000);
  // Every cache warm with every key, so that a missed invalidation shows.
  for (let i = 0; i < INSTANCES; i++) for (let k = 0; k < KEYS; k++) verify(i, k, "warm-up");
  await drive(() => s.count() === 0, 1000);

  const invalidations: Promise<unknown>[] = [];
  for (const c of commands) {
    switch (c.t) {
      case "step":
        for (let n = 0; n < c.n && s.count() > 0; n++) await s.waitOne();
        break;
      case "advance":
        world.t += c.ms;
        break;
      case "timers":
        if (!stalled.has(nodes[c.i].name)) nodes[c.i].clock.fireDue();
        break;
      case "revoke": {
        if (committed[c.k] || stalled.has(nodes[c.i].name)) break;
        committed[c.k] = true; // the store's transaction committed, then the broadcast
        const k = c.k;
        invalidations.push(
          nodes[c.i].broadcast.invalidate({ kind: "keys", keyIds: [`key_${k}`] }).then(
            () => {
              settled[k] = true;
              // The most adversarial moment: every instance verifies the key the instant RevokeKey would return.
              for (let i = 0; i < INSTANCES; i++) verify(i, k, "verify as RevokeKey returns");
            },
            () => {}, // UNAVAILABLE: no promise was made
          ),
        );
        break;
      }
      case "verify":
        verify(c.i, c.k, "verify");
        break;
      case "cut":
        nodes[c.i].pubsub.cut();
        break;
      case "publishFails":
        nodes[c.i].pubsub.publishFails = c.on;
        break;
      case "stall":
        if (c.on) stalled.add(nodes[c.i].name);
        else stalled.delete(nodes[c.i].name);
        break;
      case "replay":
        if (broker.log.length > 0) {
          const m = broker.log[c.j % broker.log.length];
          broker.publish(m.channel, m.message);
        }
        break;
    }
  }
  // Everyone resumes; run until every invalidation settled, then verify everything everywhere once more.
  stalled.clear();
  for (const n of nodes) n.pubsub.publishFails = false;
  let all = false;
  void Promise.all(invalidations).then(() => (all = true));
  await drive(() => all, 5000);
  expect(all).toBe(true);
  for (let i = 0; i < INSTANCES; i++) for (let k = 0; k < KEYS; k++) verify(i, k, "final verify");
  return violations;
}

describe("the revocation protocol (model-based)", () => {
  it("never answers a verification that started after invalidate() resolved from a stale cache entry", async () => {
    await fc.assert(
      fc.asyncProperty(fc.scheduler(), fc.array(command, { minLength: 20, maxLength: 150 }), async (s, commands) => {
        expect(await run(s, commands)).toEqual([]);
      }),
      { numRuns: Number(process.env.MODEL_RUNS ?? 1000) },
    );
  }, 120_000);
});
