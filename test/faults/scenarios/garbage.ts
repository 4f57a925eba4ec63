// Garbage on every channel the service uses (issue 19: "hostile or malformed
// pub/sub messages crash every instance"), published on the instances' real
// Redis while they serve: three instances, each in a process of its own, so a
// crash is a dead process and not a dead test runner.
// - Every channel: serviceChannels() of the running instances' ids, which a
//   publisher learns from Redis itself (PUBSUB CHANNELS), as an attacker would.
// - Every kind: random bytes, text that is not JSON, JSON of every wrong
//   shape, messages over the size limit, forged acks and pings for the real
//   instance ids (a publisher without KEY_PEPPER cannot sign), and replays of
//   real messages captured off the bus.
// What must hold: no instance exits; each counts exactly the invalid messages
// it received (apikeys_broadcast_rejected_total); and under a flood, the
// revocation race keeps its guarantee (zero acceptances of a verification that
// started after RevokeKey returned).
import { randomBytes } from "node:crypto";
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CHANNELS, CHANNEL_PATTERN, serviceChannels } from "../../../src/broadcast/messages.js";
import { type TestDatabase, freshDatabase } from "../../helpers/mysql.js";
import { TestRedis } from "../../helpers/redis.js";
import { type ChildServer, startChildServer } from "../support/child-server.js";
import { Loop, owner, pick, sleep, until } from "../support/load.js";
import { type RaceKey, raceRevocations, raceTarget } from "../support/race.js";

export interface GarbageOptions {
  /** Keys revoked in the race under the flood. */
  keys: number;
  /** Publishers of garbage running during the race, each as fast as Redis takes it. */
  floodLanes: number;
  timeoutMs: number;
}

const ORG = "org_garbage";
const INSTANCES = 3;
/** The service's limit is 8 MiB (src/broadcast/messages.ts): one message over it. */
const HUGE = 9 * 1024 * 1024;

/** Invalid on any channel: none of these is signed with a key derived from KEY_PEPPER. */
function invalidMessages(ids: string[]): (string | Buffer)[] {
  const someId = ids[0];
  const fakeMac = "A".repeat(22);
  const forged = (body: object) => `${fakeMac}.${JSON.stringify(body)}`;
  return [
    "",
    "x",
    "null",
    "42",
    "[]",
    "{}",
    '{"id":"i_x:1","o":"i_x","e":{"kind":"keys"}}', // the v1 envelope, wrong shape
    '{"__proto__":{"polluted":true},"t":"bye","o":"' + someId + '"}',
    "{".repeat(10_000),
    "\u0000\uffff\ud800".repeat(500),
    randomBytes(64),
    randomBytes(4096),
    "y".repeat(1024 * 1024),
    `${fakeMac}.${"z".repeat(HUGE)}`,
    // The right shapes for the real instance ids, without a valid signature: forged, unsigned, or signed with junk.
    ...ids.flatMap((id) => [
      JSON.stringify({ t: "ping", o: id, n: "a".repeat(16) }),
      forged({ t: "ping", o: id, n: "b".repeat(16) }),
      forged({ t: "ack", o: id, id: 1 }),
      forged({ t: "ack", o: id, id: 2 ** 31 }),
      forged({ t: "inv", o: id, id: 1, e: { kind: "org", organizationId: ORG } }),
      forged({ t: "bye", o: id }),
      `${"_".repeat(22)},${fakeMac}.${JSON.stringify({ t: "bye", o: id })}`,
    ]),
  ];
}

/** Prometheus text → the value of one unlabelled counter. */
function counter(metrics: string, name: string): number {
  const line = metrics.split("\n").find((l) => l.startsWith(`${name} `));
  if (line === undefined) throw new Error(`no ${name} in /metrics`);
  return Number(line.slice(name.length + 1));
}
const rejected = async (x: ChildServer) => counter(await x.metrics(), "apikeys_broadcast_rejected_total");

export function garbageSuite(o: GarbageOptions): void {
  describe(`garbage on every channel the service uses (${INSTANCES} instances, each in its own process)`, () => {
    let db: TestDatabase;
    let redis: TestRedis;
    let publisher: Redis;
    let listener: Redis;
    const instances: ChildServer[] = [];
    /** Real messages seen on the service's channels, to replay. */
    const captured: { channel: string; message: Buffer }[] = [];
    let channels: string[] = [];

    beforeAll(async () => {
      [db, redis] = await Promise.all([freshDatabase(), TestRedis.start()]);
      const env = { REDIS_URL: redis.url, MYSQL_URL: db.url, CACHE_LEASE_MS: "1000", LOG_LEVEL: "warn" };
      instances.push(await startChildServer(env)); // the first one migrates
      instances.push(...(await Promise.all(Array.from({ length: INSTANCES - 1 }, () => startChildServer(env)))));
      publisher = new Redis(redis.url);
      listener = new Redis(redis.url);
      // What anyone with access to Redis sees: the channels with subscribers, the ack channels naming the instances.
      const ackPrefix = CHANNELS.ack("");
      let ids: string[] = [];
      await until(
        "every instance subscribed",
        async () => {
          const active = (await publisher.pubsub("CHANNELS", CHANNEL_PATTERN)) as string[];
          ids = active.filter((c) => c.startsWith(ackPrefix)).map((c) => c.slice(ackPrefix.length));
          return ids.length === INSTANCES && active.includes(CHANNELS.bus);
        },
        20_000,
      );
      channels = serviceChannels(ids);
      listener.on("messageBuffer", (channel: Buffer, message: Buffer) => {
        if (captured.length < 500) captured.push({ channel: channel.toString(), message });
      });
      await listener.subscribe(...channels);
    }, 120_000);

    afterAll(async () => {
      publisher?.disconnect();
      listener?.disconnect();
      await Promise.all(instances.map((x) => x.kill()));
      await redis?.kill();
      await db?.drop();
    });

    /** Messages each instance receives when `message` is published on `channel`: the bus reaches all, an ack channel one. */
    const receivers = (channel: string) => (channel === CHANNELS.bus ? instances.map((_, i) => i) : [channels.indexOf(channel) - 1]);

    it(
      "every invalid message on every channel is counted by the instance that got it, and none crashes",
      async () => {
        const before = await Promise.all(instances.map(rejected));
        const expected = instances.map(() => 0);
        const garbage = invalidMessages(channels.slice(1).map((c) => c.slice(CHANNELS.ack("").length)));
        for (const channel of channels) {
          for (const message of garbage) {
            const got = await publisher.publish(channel, message);
            // Our own listener is the extra subscriber.
            expect(got).toBe(receivers(channel).length + 1);
            for (const i of receivers(channel)) expected[i]++;
          }
        }
        const counted = async () => (await Promise.all(instances.map(rejected))).map((n, i) => n - before[i]);
        await until("every invalid message counted", async () => (await counted()).every((n, i) => n >= expected[i]), 20_000);
        await sleep(500);
        expect(await counted()).toEqual(expected);
        expect(instances.map((x) => x.alive())).toEqual(instances.map(() => true));
        console.log(`[garbage] ${garbage.length} kinds × ${channels.length} channels; counted by each instance: ${(await counted()).join(", ")}`);
      },
      o.timeoutMs,
    );

    it(
      "under a flood of garbage and replays on every channel, zero acceptances after RevokeKey returned",
      async () => {
        const keys: RaceKey[] = [];
        for (let i = 0; i < o.keys; i += 20) {
          const batch = await Promise.all(
            Array.from({ length: Math.min(20, o.keys - i) }, () => instances[0].client.createKey({ organizationId: ORG, actor: owner, name: "garbage" })),
          );
          keys.push(...batch.map((r) => ({ id: r.key!.id, secret: r.secret })));
        }
        for (const x of instances) for (const k of keys) expect((await x.client.verifyKey({ key: k.secret })).valid).toBe(true);
        const garbage = invalidMessages(channels.slice(1).map((c) => c.slice(CHANNELS.ack("").length))).filter((m) => m.length < HUGE);
        expect(captured.length).toBeGreaterThan(0);
        let published = 0;
        let replayed = 0;
        const flood = new Loop(
          async () => {
            if (Math.random() < 0.3) {
              const real = pick(captured);
              await publisher.publish(real.channel, real.message);
              replayed++;
            } else await publisher.publish(pick(channels), pick(garbage));
            published++;
          },
          { concurrency: o.floodLanes },
        );
        const before = await Promise.all(instances.map(rejected));
        const floodStarted = performance.now();
        let result;
        try {
          result = await raceRevocations({
            organizationId: ORG,
            targets: instances.map((x, i) => raceTarget(`instance ${i}`, x.client)),
            keys,
            revokers: 2,
            verifiers: 6,
            // A flood of megabyte messages can delay a publish past its timeout: UNAVAILABLE, and the caller retries.
            retryUnavailable: true,
          });
        } finally {
          await flood.stop();
        }
        const counted = (await Promise.all(instances.map(rejected))).map((n, i) => n - before[i]);
        console.log(
          `[garbage] flood: ${published} messages in ${((performance.now() - floodStarted) / 1000).toFixed(1)} s ` +
            `(${replayed} replays of real ones) during ${result.revoked} revocations; ` +
            `rejected by each instance: ${counted.join(", ")}; ${result.retried} RevokeKeys answered UNAVAILABLE and were retried; ` +
            `${result.checkedAfter} verifications after RevokeKey returned`,
        );
        expect(instances.map((x) => x.alive())).toEqual(instances.map(() => true));
        expect(result.errors).toEqual([]);
        expect(result.lateAcceptances).toEqual([]);
        expect(result.revoked).toBe(o.keys);
        expect(counted.every((n) => n > 0)).toBe(true);
      },
      o.timeoutMs,
    );
  });
}
