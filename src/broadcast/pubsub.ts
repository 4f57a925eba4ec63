// The pub/sub transport the revocation protocol (redis-broadcast.ts) runs on:
// small on purpose, so that the protocol is one class whatever the topology
// (standalone Redis, Redis Cluster: redis-pubsub.ts) and can be driven by a
// model-based test over an in-memory transport (test/helpers/memory-pubsub.ts).
//
// What the protocol relies on, and every implementation must give:
// - One subscriber connection receives the messages of all its channels in
//   the order the server processed their publishes (Redis: one thread per
//   server, or per shard with every channel in one slot).
// - subscribe() resolves only once the server has confirmed every channel:
//   whatever is published after that is delivered, until `lost`.
// - `lost` is reported whenever the subscription may have missed a message
//   (connection closed or reset, server-side unsubscribe, slot moved).

export interface PubSubHandlers {
  /** A message on a subscribed channel, in server order. */
  message(channel: string, message: string): void;
  /** The subscription may have missed messages; nothing is subscribed any more until subscribe() succeeds again. */
  lost(reason: string): void;
}

export interface PubSub {
  /** Sets the handlers; called once, before connect(). */
  listen(handlers: PubSubHandlers): void;
  /** Connects the publisher and the subscriber connection; fails if the server cannot be reached. */
  connect(): Promise<void>;
  /** Whether subscribe() can be tried now (the subscriber connection is up). */
  readonly canSubscribe: boolean;
  /** Subscribes to exactly these channels; resolves once the server confirmed each one. */
  subscribe(channels: readonly string[]): Promise<void>;
  /** Publishes; resolves with the number of subscribers the server delivered it to (fails fast when disconnected). */
  publish(channel: string, message: string): Promise<number>;
  close(): Promise<void>;
}

/**
 * The protocol's clock: monotonic milliseconds (never Date.now: a wall-clock
 * step must not stretch a lease) and timers on the same clock.
 */
export interface MonotonicClock {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export const systemClock: MonotonicClock = {
  now: () => performance.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (handle) => clearTimeout(handle as NodeJS.Timeout),
};
