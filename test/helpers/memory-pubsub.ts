// An in-memory pub/sub "server" and its connections, implementing the
// broadcast's PubSub port (src/broadcast/pubsub.ts) with what Redis promises
// and nothing more: one order of publishes, each connection's messages
// delivered in that order, a subscription confirmed before it counts. Every
// step that takes time in real life (a publish reaching the server, its
// reply, each delivery, a subscription's confirmation, noticing a dropped
// connection) is a task handed to `defer`: queueMicrotask for plain tests,
// fast-check's scheduler for the model-based test, which runs them in
// adversarial orders.
import type { PubSub, PubSubHandlers } from "../../src/broadcast/pubsub.js";

export type Defer = (task: () => void, label: string) => void;

export class MemoryBroker {
  readonly connections = new Set<MemoryPubSub>();
  /** Every message the server processed, in its order: what an eavesdropper saw (for replays). */
  readonly log: { channel: string; message: string }[] = [];

  constructor(readonly defer: Defer = (task) => queueMicrotask(task)) {}

  /** The server processes a publish: delivered to every connection subscribed now, in this order. */
  publish(channel: string, message: string): number {
    this.log.push({ channel, message });
    let receivers = 0;
    for (const c of this.connections) {
      if (c.serverSideChannels?.has(channel)) {
        c.enqueue(channel, message);
        receivers++;
      }
    }
    return receivers;
  }

  connect(name: string): MemoryPubSub {
    const c = new MemoryPubSub(this, name);
    this.connections.add(c);
    return c;
  }
}

export class MemoryPubSub implements PubSub {
  /** What the server has this connection subscribed to (null: nothing). */
  serverSideChannels: Set<string> | null = null;
  /** Whether the server is reachable from here. */
  reachable = true;
  /** Publishes fail (the publisher's connection is cut) while set. */
  publishFails = false;
  private handlers: PubSubHandlers | null = null;
  private readonly queue: { channel: string; message: string }[] = [];

  constructor(
    private readonly broker: MemoryBroker,
    readonly name: string,
  ) {}

  listen(handlers: PubSubHandlers): void {
    this.handlers = handlers;
  }

  async connect(): Promise<void> {
    if (!this.reachable) throw new Error("unreachable");
  }

  get canSubscribe(): boolean {
    return this.reachable;
  }

  subscribe(channels: readonly string[]): Promise<void> {
    return new Promise((resolve, reject) => {
      if (!this.reachable) return reject(new Error("unreachable"));
      this.broker.defer(() => {
        if (!this.reachable) return reject(new Error("unreachable"));
        // The server subscribes now: what is published from here on is delivered.
        this.serverSideChannels = new Set(channels);
        this.broker.defer(() => (this.reachable ? resolve() : reject(new Error("unreachable"))), `${this.name} subscribed`);
      }, `${this.name} subscribe`);
    });
  }

  publish(channel: string, message: string): Promise<number> {
    return new Promise((resolve, reject) => {
      if (this.publishFails || !this.reachable) return reject(new Error("publish failed"));
      this.broker.defer(() => {
        const receivers = this.broker.publish(channel, message);
        this.broker.defer(() => resolve(receivers), `${this.name} publish reply`);
      }, `${this.name} publish`);
    });
  }

  async close(): Promise<void> {
    this.serverSideChannels = null;
    this.queue.length = 0;
    this.broker.connections.delete(this);
  }

  enqueue(channel: string, message: string): void {
    this.queue.push({ channel, message });
    this.broker.defer(() => this.deliverNext(), `${this.name} deliver`);
  }

  /**
   * The server drops this connection's subscription (a cut cable, a failover)
   * and loses what was in flight to it; the client notices later (a task of its own).
   */
  cut(): void {
    if (this.serverSideChannels === null) return;
    this.serverSideChannels = null;
    this.queue.length = 0;
    this.broker.defer(() => this.handlers?.lost("cut"), `${this.name} notices the cut`);
  }

  /** Delivers the oldest undelivered message: whatever the scheduler does, each connection's order holds. */
  private deliverNext(): void {
    const next = this.queue.shift();
    if (next !== undefined) this.handlers?.message(next.channel, next.message);
  }
}
