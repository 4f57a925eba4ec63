// Hostile and malformed messages on every channel the broadcast uses: each one
// is counted, never throws, and leaves the cache unused until a fresh ping of
// the instance's own has made the round trip.
import { describe, expect, it } from "vitest";
import { CHANNEL_PREFIX, CHANNELS, MessageAuth, decodeAck, decodeBus, serviceChannels } from "../../src/broadcast/messages.js";
import type { MonotonicClock } from "../../src/broadcast/pubsub.js";
import { RedisBroadcast } from "../../src/broadcast/redis-broadcast.js";
import { VerifyCache, buildEntry } from "../../src/keys/verify-cache.js";
import { createLogger } from "../../src/logger.js";
import { MemoryBroker } from "../helpers/memory-pubsub.js";
import { keyRecord } from "../helpers/records.js";
import { Role } from "../../gen/apikeys/v1/apikeys_pb.js";

const verifyRecord = () => ({ key: keyRecord({ id: "key_1" }), secretExpireTime: null, memberRole: Role.OWNER, orgEnabled: true });

const PEPPER = "unit-test-pepper-0123456789";

/** A clock that stands still unless told; timers fire only when it is advanced. */
function fakeClock(): MonotonicClock & { advance(ms: number): void; jump(ms: number): void } {
  let now = 1000;
  const timers = new Map<number, { at: number; fn: () => void }>();
  let next = 0;
  return {
    now: () => now,
    setTimeout(fn, ms) {
      timers.set(++next, { at: now + ms, fn });
      return next;
    },
    clearTimeout: (h) => void timers.delete(h as number),
    /** Time passes but no timer fires (a process whose timers are late). */
    jump(ms) {
      now += ms;
    },
    advance(ms) {
      now += ms;
      for (const [h, t] of [...timers].sort((a, b) => a[1].at - b[1].at)) {
        if (t.at <= now && timers.delete(h)) t.fn();
      }
    },
  };
}

const settle = () => new Promise((r) => setTimeout(r, 0));

async function instances(n: number) {
  const broker = new MemoryBroker();
  const clock = fakeClock();
  const logger = createLogger("silent");
  const all = Array.from({ length: n }, (_, i) => {
    const cache = new VerifyCache({ maxEntries: 100, ttlMs: 60_000, negativeTtlMs: 1000, monotonicNow: clock.now });
    const broadcast = new RedisBroadcast({ pubsub: broker.connect(`i${i}`), cache, logger, peppers: [PEPPER], clock });
    return { cache, broadcast };
  });
  await Promise.all(all.map((x) => x.broadcast.start()));
  await settle();
  return { broker, clock, all };
}

/** Shapes a publisher without the pepper can send, and shapes only a buggy or foreign release could sign. */
function garbage(origin: string): string[] {
  const signed = new MessageAuth([PEPPER]);
  const other = new MessageAuth(["another-pepper-0123456789"]);
  const bus = (body: object) => signed.seal(CHANNELS.bus, body);
  return [
    "",
    "x",
    "null",
    "{}",
    "[]",
    '{"t":"ping","o":"i_aaaaaaaaaaaa","n":"aaaaaaaaaaaaaaaa"}',
    `${"A".repeat(22)}.{"t":"ping"}`,
    `${"A".repeat(22)}.`,
    ".".repeat(30),
    "\u0000\uffff".repeat(100),
    "z".repeat(9 * 1024 * 1024),
    other.seal(CHANNELS.bus, { t: "ping", o: origin, n: "a".repeat(16) }),
    // Signed, but not a shape this release knows.
    bus({ t: "inv", o: origin, id: 1, e: { kind: "keys", keyIds: [] } }),
    bus({ t: "inv", o: origin, id: 1, e: { kind: "keys", keyIds: [42] } }),
    bus({ t: "inv", o: origin, id: 0, e: { kind: "org", organizationId: "o" } }),
    bus({ t: "inv", o: origin, id: 1.5, e: { kind: "org", organizationId: "o" } }),
    bus({ t: "inv", o: origin, id: "1", e: { kind: "org", organizationId: "o" } }),
    bus({ t: "inv", o: origin, id: 1, e: { kind: "org", organizationId: "o", extra: 1 } }),
    bus({ t: "inv", o: origin, id: 1, e: { kind: "everything" } }),
    bus({ t: "inv", o: origin, id: 1, e: null }),
    bus({ t: "inv", o: "someone", id: 1, e: { kind: "org", organizationId: "o" } }),
    bus({ t: "ping", o: origin, n: "short" }),
    bus({ t: "ping", o: origin, n: "a".repeat(16), at: Date.now() + 1e9 }),
    bus({ t: "ack", o: origin, id: 1 }),
    bus({ t: "bye" }),
    signed.seal(CHANNELS.bus, JSON.parse('{"t":"bye","o":"i_aaaaaaaaaaaa","__proto__":{"x":1}}')),
    signed.seal(CHANNELS.ack("i_zzzzzzzzzzzz"), { t: "ack", o: origin, id: 1 }), // another instance's ack, replayed here
    bus({ t: "ack", o: origin, id: -1 }),
  ];
}

describe("broadcast message validation", () => {
  it("accepts what it signs and rejects what it does not", () => {
    const auth = new MessageAuth([PEPPER]);
    const ping = { t: "ping", o: "i_abcdefABCDEF", n: "0123456789abcdef" } as const;
    expect(decodeBus(auth, auth.seal(CHANNELS.bus, ping))).toEqual({ ok: true, message: ping });
    const ack = { t: "ack", o: "i_abcdefABCDEF", id: 7 } as const;
    const channel = CHANNELS.ack("i_000000000000");
    expect(decodeAck(auth, channel, auth.seal(channel, ack))).toEqual({ ok: true, message: ack });
    // Signed for one origin's ack channel, replayed on another's.
    expect(decodeAck(auth, CHANNELS.ack("i_111111111111"), auth.seal(channel, ack)).ok).toBe(false);
    // During a pepper rotation: signed with both, accepted by instances with either.
    const both = new MessageAuth([PEPPER, "the-next-pepper-0123456789"]);
    expect(decodeBus(new MessageAuth(["the-next-pepper-0123456789"]), both.seal(CHANNELS.bus, ping)).ok).toBe(true);
    expect(decodeBus(auth, both.seal(CHANNELS.bus, ping)).ok).toBe(true);
    expect(decodeBus(new MessageAuth(["a-stranger-pepper-0123456789"]), both.seal(CHANNELS.bus, ping)).ok).toBe(false);
  });

  it("names every channel the service uses, all in one cluster slot", () => {
    const ids = ["i_aaaaaaaaaaaa", "i_bbbbbbbbbbbb"];
    const channels = serviceChannels(ids);
    expect(channels).toEqual([CHANNELS.bus, CHANNELS.ack(ids[0]), CHANNELS.ack(ids[1])]);
    for (const c of channels) expect(c.startsWith(CHANNEL_PREFIX) && c.includes("{apikeys}")).toBe(true);
  });

  it("garbage on every channel: counted, no throw, the cache distrusted until a fresh ping returns", async () => {
    const { broker, clock, all } = await instances(2);
    const [a, b] = all;
    const channels = serviceChannels(all.map((x) => x.broadcast.instanceId));
    expect(a.cache.isTrusted() && b.cache.isTrusted()).toBe(true);
    let sent = 0;
    for (const channel of channels) {
      for (const message of garbage(a.broadcast.instanceId)) {
        const receivers = broker.publish(channel, message);
        sent += receivers;
        await settle();
        // Whoever received it stopped using its cache.
        for (const x of all) {
          const subscribed = channel === CHANNELS.bus || channel === CHANNELS.ack(x.broadcast.instanceId);
          if (subscribed) expect(x.cache.isTrusted(), `${channel} ${message.slice(0, 120)}`).toBe(false);
        }
        // Trust comes back with the next ping of the instance's own.
        clock.advance(a.broadcast.pingIntervalMs);
        await settle();
        expect(a.cache.isTrusted() && b.cache.isTrusted()).toBe(true);
      }
    }
    expect(a.broadcast.stats.rejected + b.broadcast.stats.rejected).toBe(sent);
    expect(sent).toBeGreaterThan(3 * 25);
  });

  it("a replayed ping extends no lease", async () => {
    const { broker, clock, all } = await instances(1);
    const [a] = all;
    const ping = broker.log.find((m) => m.message.includes('"t":"ping"'))!;
    // The lease runs out with no ping of ours coming back (the timers do not fire)…
    clock.jump(a.broadcast.leaseMs - 1);
    expect(a.cache.isTrusted()).toBe(true);
    // …and a replay of the ping that granted it does not renew it.
    broker.publish(ping.channel, ping.message);
    await settle();
    clock.jump(2);
    expect(a.cache.isTrusted()).toBe(false);
    expect(a.broadcast.stats.rejected).toBe(0);
  });

  it("a load that started before the subscription was confirmed again does not populate the cache", async () => {
    const { clock, all } = await instances(1);
    const [a] = all;
    const pubsub = (a.broadcast as unknown as { pubsub: import("../helpers/memory-pubsub.js").MemoryPubSub }).pubsub;
    pubsub.cut(); // the server dropped the subscription; what is published now is missed
    await settle();
    expect(a.cache.isTrusted()).toBe(false);
    const generation = a.cache.generation; // a load from the database starts (it may read pre-change state)
    clock.advance(a.broadcast.pingIntervalMs); // subscribed again, and a fresh ping made the round trip
    await settle();
    expect(a.cache.isTrusted()).toBe(true);
    a.cache.set("h1", buildEntry(verifyRecord(), 0), generation, 0);
    expect(a.cache.get("h1", 0)).toBeUndefined();
  });
});
