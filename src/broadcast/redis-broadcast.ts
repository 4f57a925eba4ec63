// Cross-instance invalidation with a guarantee: when invalidate() resolves, no
// instance answers a verification that starts afterwards from state older than
// the change. The protocol, its proof sketch and its bounds per failure are in
// docs/revocation.md; in short:
//
// - Leases. Every pingIntervalMs each instance publishes a ping with a fresh
//   nonce on the bus channel and remembers nonce → its own monotonic send
//   time. When its ping comes back on its subscription it trusts its cache
//   until send time + lease. A nonce counts once, and messages are signed, so
//   no replay or forgery extends a lease.
// - Order. Invalidations and pings share the bus channel, which Redis delivers
//   to each subscriber in one order. An instance that has not processed an
//   invalidation has only renewed its lease from pings ordered before it.
// - Waiting. The origin applies the change locally, publishes it, and waits
//   for its own copy to come back: by then it has seen every ping ordered
//   before it. It then waits for an ack from each instance whose last ping it
//   saw less than lease + margin ago, each only until that instance's lease
//   must have run out. An instance that stalled or was cut off stops costing
//   anything once its lease is over. Whatever happens, it stops waiting
//   lease + margin after the publish was answered: no instance's lease from a
//   ping ordered before the change lasts longer.
// - Resubscribing. After any loss of the subscription the cache is dropped;
//   after subscribing again (explicitly, confirmed by the server) the cache
//   generation is bumped, so loads that started earlier do not populate, and
//   trust returns with the first ping sent after the confirmation. For
//   lease + margin after it, this instance may have missed pings of others,
//   so as an origin it waits that long for them.
// - Hostile input. A message that fails validation is counted, logged
//   (rate-limited, without content) and makes the instance distrust its cache.
//
// If the change cannot be published, invalidate() fails with UNAVAILABLE; the
// change is in the outbox, which any instance publishes later.
import { ApiError, Status } from "../keys/errors.js";
import type { Invalidation, Invalidator } from "../keys/ports.js";
import { randomBase62 } from "../keys/key-format.js";
import type { VerifyCache } from "../keys/verify-cache.js";
import type { Logger } from "../logger.js";
import { type AckMessage, type BusMessage, CHANNELS, MessageAuth, decodeAck, decodeBus } from "./messages.js";
import { type MonotonicClock, type PubSub, systemClock } from "./pubsub.js";

export { CHANNELS, CHANNEL_PATTERN, serviceChannels } from "./messages.js";

export interface RedisBroadcastOptions {
  pubsub: PubSub;
  cache: VerifyCache | null;
  logger: Logger;
  /** KEY_PEPPER, and during a rotation the previous one too: the messages' signing keys derive from them. */
  peppers: readonly string[];
  leaseMs?: number;
  pingIntervalMs?: number;
  /** Allowance for delivery and monotonic clock rate differences between instances. */
  marginMs?: number;
  /** How long a publish may take before the change is reported UNAVAILABLE. */
  publishTimeoutMs?: number;
  clock?: MonotonicClock;
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
  /** Times the subscription was re-established after a loss (the cache started empty each time). */
  reconnects = 0;
  /** Messages rejected by validation (bad signature or shape): each made this instance distrust its cache. */
  rejected = 0;
  /** Times the subscription was lost (connection closed, server-side unsubscribe). */
  lost = 0;
  /** Last measured time from publish to all acks, ms. */
  lastAckMs = 0;
  /** Subscribers the last invalidation reached (Redis's count, this instance included). */
  lastReceivers = 0;
  /** Instances the last invalidation waited for (those whose lease could still be running). */
  lastWaitedFor = 0;
}

interface Pending {
  /** Monotonic time after which no lease from a ping ordered before the change can run: set when the publish is answered. */
  hardDeadline: number;
  /** Set when our own copy came back: instance → until when we wait for its ack. */
  waiting: Map<string, number> | null;
  /** Until when instances we may not know of (pings missed before our subscription) could still hold a lease. */
  unknownUntil: number;
  acked: Set<string>;
  timer: unknown;
  resolve: (acked: boolean) => void;
}

const DEFAULT_LEASE_MS = 1500;
const DEFAULT_PING_INTERVAL_MS = 250;
const DEFAULT_MARGIN_MS = 500;
const DEFAULT_PUBLISH_TIMEOUT_MS = 1000;
/** At most one warning per this many ms about rejected messages (a flood must not flood the logs). */
const REJECT_LOG_INTERVAL_MS = 10_000;

export class RedisBroadcast implements Invalidator {
  readonly instanceId = `i_${randomBase62(12)}`;
  readonly stats = new BroadcastStats();
  /** Test seam (see the option); may be changed while running. */
  deliveryDelayMs: number;
  private readonly pubsub: PubSub;
  private readonly cache: VerifyCache | null;
  private readonly logger: Logger;
  private readonly auth: MessageAuth;
  private readonly clock: MonotonicClock;
  readonly leaseMs: number;
  readonly pingIntervalMs: number;
  readonly marginMs: number;
  private readonly publishTimeoutMs: number;
  private readonly ackChannel: string;
  private readonly pending = new Map<number, Pending>();
  /** Our pings in flight: nonce → monotonic send time. Cleared whenever the subscription is lost. */
  private readonly pings = new Map<string, number>();
  /** Other instances: id → when we last saw one of their pings (monotonic). */
  private readonly members = new Map<string, number>();
  private seq = 0;
  private subscribed = false;
  private subscribing = false;
  private everSubscribed = false;
  /** Until when we may have missed others' pings (lease + margin after our subscription was confirmed). */
  private viewCompleteAt = Number.POSITIVE_INFINITY;
  private tickTimer: unknown = null;
  private stopped = false;
  private lastRejectLog = Number.NEGATIVE_INFINITY;
  private rejectsSinceLog = 0;

  constructor(options: RedisBroadcastOptions) {
    this.pubsub = options.pubsub;
    this.cache = options.cache;
    this.logger = options.logger;
    this.auth = new MessageAuth(options.peppers);
    this.clock = options.clock ?? systemClock;
    this.leaseMs = options.leaseMs ?? DEFAULT_LEASE_MS;
    this.pingIntervalMs = options.pingIntervalMs ?? DEFAULT_PING_INTERVAL_MS;
    this.marginMs = options.marginMs ?? DEFAULT_MARGIN_MS;
    this.publishTimeoutMs = options.publishTimeoutMs ?? DEFAULT_PUBLISH_TIMEOUT_MS;
    this.deliveryDelayMs = options.deliveryDelayMs ?? 0;
    this.ackChannel = CHANNELS.ack(this.instanceId);
    // Until the first ping comes back this instance cannot know what it missed.
    this.cache?.distrust();
    this.pubsub.listen({
      message: (channel, message) => {
        // Equal delays fire in creation order, so a delayed stream stays in order.
        if (this.deliveryDelayMs > 0) setTimeout(() => this.onMessage(channel, message), this.deliveryDelayMs);
        else this.onMessage(channel, message);
      },
      lost: (reason) => this.onLost(reason),
    });
  }

  /** Whether this instance is subscribed: it hears others and can announce (the outbox worker asks). */
  get healthy(): boolean {
    return this.subscribed;
  }

  /** The channels this instance subscribes to. */
  get channels(): string[] {
    return [CHANNELS.bus, this.ackChannel];
  }

  /** Connects and subscribes. Resolves once subscribed; fails if Redis cannot be reached at start. */
  async start(): Promise<void> {
    await this.pubsub.connect();
    await this.resubscribe();
    if (!this.subscribed) throw new Error("could not subscribe to the broadcast channels");
    this.scheduleTick();
  }

  async invalidate(event: Invalidation): Promise<void> {
    this.cache?.apply(event);
    const id = ++this.seq;
    const started = this.clock.now();
    let settle!: (acked: boolean) => void;
    const settled = new Promise<boolean>((resolve) => (settle = resolve));
    // Registered before publishing: our own copy may come back before the publish's reply.
    const entry: Pending = {
      hardDeadline: Number.POSITIVE_INFINITY,
      waiting: null,
      unknownUntil: Number.POSITIVE_INFINITY,
      acked: new Set(),
      timer: null,
      resolve: settle,
    };
    this.pending.set(id, entry);
    try {
      let receivers: number;
      try {
        receivers = await this.publish(CHANNELS.bus, { t: "inv", o: this.instanceId, id, e: event });
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
      entry.hardDeadline = this.clock.now() + this.leaseMs + this.marginMs;
      this.check(id, entry);
      if (!(await settled)) {
        this.stats.acksTimedOut++;
        this.logger.warn({ receivers, acked: entry.acked.size }, "not every instance acknowledged an invalidation; relied on cache leases");
      }
      this.stats.lastAckMs = this.clock.now() - started;
    } finally {
      if (entry.timer !== null) this.clock.clearTimeout(entry.timer);
      this.pending.delete(id);
    }
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.tickTimer !== null) this.clock.clearTimeout(this.tickTimer);
    this.tickTimer = null;
    this.cache?.distrust();
    // Others stop waiting for us at once rather than when our lease would have run out.
    if (this.subscribed) await this.publish(CHANNELS.bus, { t: "bye", o: this.instanceId }).catch(() => {});
    this.subscribed = false;
    await this.pubsub.close();
  }

  /** One periodic step: ping when subscribed, else try to subscribe again; forget what has expired. */
  private tick(): void {
    const now = this.clock.now();
    for (const [member, seen] of this.members) if (seen + this.leaseMs + this.marginMs <= now) this.members.delete(member);
    for (const [nonce, sent] of this.pings) if (sent + this.leaseMs <= now) this.pings.delete(nonce);
    if (this.subscribed) this.ping();
    else if (!this.subscribing && this.pubsub.canSubscribe) void this.resubscribe();
  }

  private scheduleTick(): void {
    if (this.stopped) return;
    this.tickTimer = this.clock.setTimeout(() => {
      this.tick();
      this.scheduleTick();
    }, this.pingIntervalMs);
    (this.tickTimer as NodeJS.Timeout).unref?.();
  }

  private ping(): void {
    const nonce = randomBase62(16);
    this.pings.set(nonce, this.clock.now());
    this.publish(CHANNELS.bus, { t: "ping", o: this.instanceId, n: nonce }).catch(() => {
      // A failed ping simply does not renew the lease.
    });
  }

  private async resubscribe(): Promise<void> {
    this.subscribing = true;
    try {
      await this.pubsub.subscribe(this.channels);
    } catch (err) {
      this.logger.warn({ err: errorText(err) }, "subscribing to the broadcast channels failed; the cache stays unused");
      return;
    } finally {
      this.subscribing = false;
    }
    if (this.stopped) return;
    // Loads that started before now may hold state from before an invalidation we missed: they must not populate.
    this.cache?.distrust();
    this.pings.clear();
    if (this.everSubscribed) this.stats.reconnects++;
    this.everSubscribed = true;
    this.subscribed = true;
    this.viewCompleteAt = this.clock.now() + this.leaseMs + this.marginMs;
    this.ping();
  }

  private onLost(reason: string): void {
    this.cache?.distrust();
    this.pings.clear();
    if (!this.subscribed) return;
    this.subscribed = false;
    this.stats.lost++;
    this.logger.info({ reason }, "broadcast subscription lost; the cache is unused until subscribed again");
  }

  private publish(channel: string, body: BusMessage | AckMessage): Promise<number> {
    const sealed = this.auth.seal(channel, body);
    return new Promise<number>((resolve, reject) => {
      const timer = this.clock.setTimeout(() => reject(new Error("publish timed out")), this.publishTimeoutMs);
      this.pubsub.publish(channel, sealed).then(
        (n) => {
          this.clock.clearTimeout(timer);
          resolve(n);
        },
        (err: unknown) => {
          this.clock.clearTimeout(timer);
          reject(err);
        },
      );
    });
  }

  private onMessage(channel: string, raw: string): void {
    if (this.stopped) return;
    if (channel === CHANNELS.bus) {
      const decoded = decodeBus(this.auth, raw);
      if (!decoded.ok) return this.reject("bus", decoded.reason);
      this.onBus(decoded.message);
    } else if (channel === this.ackChannel) {
      const decoded = decodeAck(this.auth, channel, raw);
      if (!decoded.ok) return this.reject("ack", decoded.reason);
      const entry = this.pending.get(decoded.message.id);
      if (entry === undefined) return; // late: the invalidation was settled already
      entry.acked.add(decoded.message.o);
      this.check(decoded.message.id, entry);
    } else {
      this.reject("unknown channel", "channel");
    }
  }

  private onBus(m: BusMessage): void {
    if (m.t === "ping") {
      if (m.o !== this.instanceId) {
        this.members.set(m.o, this.clock.now());
        return;
      }
      const sent = this.pings.get(m.n);
      // Unknown: sent before the subscription was (re)confirmed, expired, or a replay. Never extends the lease.
      if (sent === undefined) return;
      this.pings.delete(m.n);
      this.cache?.trustUntil(sent + this.leaseMs);
    } else if (m.t === "inv") {
      this.stats.received++;
      if (m.o === this.instanceId) {
        // Our own change, applied before it was published. Every ping ordered before it has been seen.
        const entry = this.pending.get(m.id);
        if (entry !== undefined && entry.waiting === null) this.returned(m.id, entry);
        return;
      }
      // Evict first (synchronously), then acknowledge.
      this.cache?.apply(m.e);
      this.publish(CHANNELS.ack(m.o), { t: "ack", o: this.instanceId, id: m.id }).catch(() => {
        // The origin falls back to waiting out our lease.
      });
    } else {
      this.members.delete(m.o);
      for (const [id, entry] of this.pending) {
        if (entry.waiting?.delete(m.o)) this.check(id, entry);
      }
    }
  }

  /** Our own invalidation came back: from now on we know whom to wait for, and how long. */
  private returned(id: number, entry: Pending): void {
    const now = this.clock.now();
    const waiting = new Map<string, number>();
    for (const [member, seen] of this.members) {
      const leaseEnd = seen + this.leaseMs + this.marginMs;
      if (leaseEnd > now) waiting.set(member, leaseEnd);
    }
    entry.waiting = waiting;
    // Subscribed since viewCompleteAt − lease − margin: pings ordered before that went unseen, their leases end by then.
    entry.unknownUntil = this.subscribed ? this.viewCompleteAt : Number.POSITIVE_INFINITY;
    this.stats.lastWaitedFor = waiting.size;
    this.check(id, entry);
  }

  /** Settles the invalidation if nobody can still answer from pre-change state; else arms a timer for the next deadline. */
  private check(id: number, entry: Pending): void {
    if (!this.pending.has(id)) return;
    const now = this.clock.now();
    if (now >= entry.hardDeadline) return entry.resolve(false);
    let next = entry.hardDeadline;
    if (entry.waiting !== null) {
      let open = false;
      let leaseRanOut = false;
      for (const [member, until] of entry.waiting) {
        if (entry.acked.has(member)) continue;
        if (until <= now) {
          leaseRanOut = true;
          continue;
        }
        open = true;
        if (until < next) next = until;
      }
      if (entry.unknownUntil > now) {
        open = true;
        if (entry.unknownUntil < next) next = entry.unknownUntil;
      }
      // Settled: acked by all it waited for (true), or some of them only by their lease running out (false).
      if (!open) return entry.resolve(!leaseRanOut);
    }
    if (next === Number.POSITIVE_INFINITY) return; // the publish is not answered yet; check() runs again then
    if (entry.timer !== null) this.clock.clearTimeout(entry.timer);
    entry.timer = this.clock.setTimeout(() => {
      entry.timer = null;
      this.check(id, entry);
    }, next - now);
  }

  /** A message that failed validation: counted, logged without content (rate-limited), and the cache distrusted. */
  private reject(where: string, reason: string): void {
    this.stats.rejected++;
    this.cache?.distrust();
    this.rejectsSinceLog++;
    const now = this.clock.now();
    if (now - this.lastRejectLog >= REJECT_LOG_INTERVAL_MS) {
      this.logger.warn(
        { channel: where, reason, rejected: this.rejectsSinceLog },
        "rejected broadcast message(s) that failed validation; the cache was emptied (is something else publishing on the service's channels?)",
      );
      this.lastRejectLog = now;
      this.rejectsSinceLog = 0;
    }
  }
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
