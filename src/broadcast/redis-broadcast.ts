// Cross-instance invalidation over Redis pub/sub, with a guarantee:
// when invalidate() resolves, no instance answers from state older than the change.
//
// How:
// 1. The change is already committed to the database. The origin applies it
//    to its own cache, then PUBLISHes it. Redis answers with the number of
//    subscribers it delivered the message to; each of them evicts, then acks
//    (the origin, one of them, counts its own copy without sending an ack).
// 2. invalidate() resolves when every receiver has acked — or, at the latest,
//    after lease + margin. That is still safe, because of (3).
// 3. Cache trust is a lease: each instance publishes a ping stamped with its
//    own clock every pingIntervalMs and, on receiving it back on its
//    subscriber connection, trusts its cache until stamp + lease. Redis
//    delivers messages on one connection in order, so an instance that has not
//    processed a change has only processed pings sent before the change was
//    published: its lease ends within `lease` of the publish, before the
//    origin stops waiting. A lost connection, a stalled subscriber or a
//    silent network all end in the same place: the instance stops using its
//    cache and verifies from the database.
// 4. While the subscriber is disconnected the cache is dropped and unused;
//    after reconnecting it starts empty (whatever was missed is gone) and is
//    used again once a ping makes the round trip.
// If the change cannot be published at all, invalidate() fails with
// UNAVAILABLE: the change is stored, but the caller must retry to be sure
// every instance saw it.
import { ApiError, Status } from "../keys/errors.js";
import type { Invalidation, Invalidator } from "../keys/ports.js";
import { randomBase62 } from "../keys/key-format.js";
import type { VerifyCache } from "../keys/verify-cache.js";
import type { Logger } from "../logger.js";
import { type RedisClient, type RedisTarget, redisClient } from "../redis/connections.js";

/** Channel names, versioned so that incompatible releases never talk to each other. */
export const CHANNELS = {
  invalidate: "apikeys:v1:invalidate",
  ack: (instanceId: string) => `apikeys:v1:ack:${instanceId}`,
  ping: (instanceId: string) => `apikeys:v1:ping:${instanceId}`,
} as const;

interface Envelope {
  /** Message id, unique per origin. */
  id: string;
  /** Origin instance id: where to send the ack. */
  o: string;
  e: Invalidation;
}

export interface RedisBroadcastOptions {
  redis: RedisTarget;
  cache: VerifyCache | null;
  logger: Logger;
  leaseMs?: number;
  pingIntervalMs?: number;
  /** Allowance for clock skew between instances and delivery delay. */
  marginMs?: number;
  now?: () => number;
  /**
   * Test seam: handle every received message this much later, in order —
   * an instance that is slow to read its subscription, pings included.
   */
  deliveryDelayMs?: number;
}

export class BroadcastStats {
  published = 0;
  acksTimedOut = 0;
  received = 0;
  reconnects = 0;
  /** Last measured time from publish to all acks, ms. */
  lastAckMs = 0;
  /**
   * Subscribers the last invalidation reached (Redis's count, this instance included): every one of them must
   * acknowledge before the change's RPC returns, so one that should not be there (a stray instance on the same
   * Redis) slows every revocation.
   */
  lastReceivers = 0;
}

export class RedisBroadcast implements Invalidator {
  readonly instanceId = `i_${randomBase62(12)}`;
  readonly stats = new BroadcastStats();
  private readonly pub: RedisClient;
  private readonly sub: RedisClient;
  private readonly cache: VerifyCache | null;
  private readonly logger: Logger;
  private readonly leaseMs: number;
  private readonly pingIntervalMs: number;
  private readonly marginMs: number;
  private readonly now: () => number;
  /** Test seam (see the option); may be changed while running. */
  deliveryDelayMs: number;
  private readonly pending = new Map<string, { needed: number; got: number; done: () => void }>();
  private seq = 0;
  private pingTimer: NodeJS.Timeout | null = null;
  private subscribedOnce = false;

  constructor(options: RedisBroadcastOptions) {
    this.cache = options.cache;
    this.logger = options.logger;
    this.leaseMs = options.leaseMs ?? 1500;
    this.pingIntervalMs = options.pingIntervalMs ?? 250;
    this.marginMs = options.marginMs ?? 500;
    this.now = options.now ?? Date.now;
    this.deliveryDelayMs = options.deliveryDelayMs ?? 0;
    // Commands fail fast while disconnected instead of queueing: a revoke must not hang.
    this.pub = redisClient(options.redis, "publisher");
    this.sub = redisClient(options.redis, "subscriber");
    // Until the first ping comes back this instance cannot know what it missed.
    this.cache?.distrust();
    this.sub.on("message", (channel: string, message: string) => {
      // Equal delays fire in creation order, so a delayed stream stays in order.
      if (this.deliveryDelayMs > 0) setTimeout(() => this.onMessage(channel, message), this.deliveryDelayMs);
      else this.onMessage(channel, message);
    });
    this.sub.on("ready", () => this.onSubscriberReady());
    this.sub.on("close", () => this.onSubscriberLost());
    this.sub.on("error", (err: Error) => this.logger.debug({ err: err.message }, "redis subscriber error"));
    this.pub.on("error", (err: Error) => this.logger.debug({ err: err.message }, "redis publisher error"));
  }

  /** Connects and subscribes. Resolves once subscribed; fails if Redis cannot be reached at start. */
  async start(): Promise<void> {
    await Promise.all([this.pub.connect(), this.sub.connect()]);
    await this.sub.subscribe(CHANNELS.invalidate, CHANNELS.ack(this.instanceId), CHANNELS.ping(this.instanceId));
    this.subscribedOnce = true;
    this.pingTimer = setInterval(() => this.ping(), this.pingIntervalMs);
    this.pingTimer.unref();
    this.ping();
  }

  async invalidate(event: Invalidation): Promise<void> {
    this.cache?.apply(event);
    const id = `${this.instanceId}:${++this.seq}`;
    const started = this.now();
    let timer: NodeJS.Timeout | undefined;
    const acked = new Promise<boolean>((resolve) => {
      this.pending.set(id, { needed: Number.POSITIVE_INFINITY, got: 0, done: () => resolve(true) });
      timer = setTimeout(() => resolve(false), this.leaseMs + this.marginMs);
    });
    try {
      const envelope: Envelope = { id, o: this.instanceId, e: event };
      let receivers: number;
      try {
        receivers = await this.pub.publish(CHANNELS.invalidate, JSON.stringify(envelope));
      } catch (err) {
        throw Object.assign(
          new ApiError(
            Status.UNAVAILABLE,
            "BROADCAST_FAILED",
            "the change is stored, but it could not be announced to other instances (Redis unavailable); retry the call",
          ),
          { cause: err },
        );
      }
      this.stats.published++;
      this.stats.lastReceivers = receivers;
      const entry = this.pending.get(id);
      if (entry) {
        entry.needed = receivers;
        if (entry.got >= receivers) entry.done();
      }
      if (!(await acked)) {
        this.stats.acksTimedOut++;
        this.logger.warn({ receivers, got: entry?.got }, "not every instance acknowledged an invalidation; relying on cache leases");
      }
      this.stats.lastAckMs = this.now() - started;
    } finally {
      clearTimeout(timer);
      this.pending.delete(id);
    }
  }

  async stop(): Promise<void> {
    if (this.pingTimer) clearInterval(this.pingTimer);
    this.pingTimer = null;
    this.cache?.distrust();
    this.sub.disconnect();
    this.pub.disconnect();
  }

  private ping(): void {
    if (this.pub.status !== "ready") return;
    this.pub.publish(CHANNELS.ping(this.instanceId), String(this.now())).catch(() => {
      // A failed ping simply does not renew the lease.
    });
  }

  private onMessage(channel: string, message: string): void {
    if (channel === CHANNELS.invalidate) {
      let envelope: Envelope;
      try {
        envelope = JSON.parse(message) as Envelope;
      } catch {
        this.logger.warn("ignoring a malformed invalidation message");
        return;
      }
      this.stats.received++;
      if (envelope.o === this.instanceId) {
        // Our own change, applied before it was published: our own ack, counted here rather than sent round.
        this.acked(envelope.id);
        return;
      }
      // Evict first (synchronously), then acknowledge.
      this.cache?.apply(envelope.e);
      this.pub.publish(CHANNELS.ack(envelope.o), envelope.id).catch(() => {
        // The origin falls back to waiting out the lease.
      });
    } else if (channel === CHANNELS.ack(this.instanceId)) {
      this.acked(message);
    } else if (channel === CHANNELS.ping(this.instanceId)) {
      const sentAt = Number(message);
      if (Number.isFinite(sentAt)) this.cache?.trustUntil(sentAt + this.leaseMs);
    }
  }

  private acked(id: string): void {
    const entry = this.pending.get(id);
    if (entry && ++entry.got >= entry.needed) entry.done();
  }

  private onSubscriberReady(): void {
    // ioredis resubscribes by itself after a reconnect; what was published meanwhile is lost,
    // so start from an empty cache. Trust returns with the next ping.
    if (this.subscribedOnce) {
      this.stats.reconnects++;
      this.cache?.distrust();
      this.logger.info("redis subscriber reconnected; cache emptied");
    }
  }

  private onSubscriberLost(): void {
    this.cache?.distrust();
  }
}
