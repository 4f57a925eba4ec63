// The broadcast's transport on ioredis: standalone Redis (PUBLISH/SUBSCRIBE)
// or Redis Cluster (SPUBLISH/SSUBSCRIBE on the shard that owns the channels'
// slot: every channel carries the {apikeys} hash tag).
//
// The subscriber is a connection of our own, never re-established behind our
// back: ioredis's autoResubscribe reports `ready` before it has re-sent
// SUBSCRIBE, and the Cluster client's sharded subscribers resubscribe by
// themselves after a failover, both leaving a window in which a missed
// message goes unnoticed. Here any close, error or server-side unsubscribe
// (a slot moving, a failover) is reported as `lost` and the connection is
// dropped; subscribe() opens a new one to the slot's current owner and
// resolves only once the server confirmed every channel.
import { Cluster, type Redis } from "ioredis";
import { connectRedis } from "../redis/connections.js";
import type { PubSub, PubSubHandlers } from "./pubsub.js";

/** How long opening the subscriber connection may take. */
const SUBSCRIBER_CONNECT_TIMEOUT_MS = 1000;

export class RedisPubSub implements PubSub {
  private handlers: PubSubHandlers | null = null;
  private sub: Redis | null = null;
  private readonly cluster: boolean;
  private closed = false;

  /** `client` publishes, and is closed by close(): give the broadcast a client of its own. */
  constructor(private readonly client: Redis | Cluster) {
    this.cluster = client instanceof Cluster;
  }

  listen(handlers: PubSubHandlers): void {
    this.handlers = handlers;
  }

  async connect(): Promise<void> {
    if (this.client.status === "wait") await connectRedis(this.client);
  }

  get canSubscribe(): boolean {
    return !this.closed && this.client.status === "ready";
  }

  async subscribe(channels: readonly string[]): Promise<void> {
    this.drop();
    const conn = await this.subscriberConnection(channels[0]);
    // Before SUBSCRIBE: a message may follow its confirmation in the same read.
    const onMessage = (channel: string, message: string) => {
      if (this.sub === conn) this.handlers?.message(channel, message);
    };
    const lost = (reason: string) => {
      if (this.sub !== conn) return;
      this.drop();
      this.handlers?.lost(reason);
    };
    conn.on(this.cluster ? "smessage" : "message", onMessage);
    conn.on("close", () => lost("connection closed"));
    conn.on("error", (err: Error) => lost(`connection error: ${err.message}`));
    // An unsolicited SUNSUBSCRIBE: the slot moved to another shard (ioredis reports it as `moved`).
    conn.on("moved", () => lost("slot moved"));
    this.sub = conn;
    try {
      await conn.connect();
      if (this.cluster) await conn.ssubscribe(...channels);
      else await conn.subscribe(...channels);
    } catch (err) {
      if (this.sub === conn) this.drop();
      throw err;
    }
    if (this.sub !== conn) throw new Error("the subscriber connection was lost while subscribing");
  }

  async publish(channel: string, message: string): Promise<number> {
    const receivers = this.cluster ? await this.client.spublish(channel, message) : await this.client.publish(channel, message);
    return Number(receivers);
  }

  async close(): Promise<void> {
    this.closed = true;
    this.drop();
    this.client.disconnect();
  }

  private drop(): void {
    const conn = this.sub;
    this.sub = null;
    conn?.disconnect();
  }

  /** A new connection to the server, or on a cluster to the master that owns the channels' slot now. */
  private async subscriberConnection(channel: string): Promise<Redis> {
    const options = {
      lazyConnect: true,
      autoResubscribe: false,
      // Never reconnected behind our back: a new subscription is a new connection (see the file comment).
      retryStrategy: () => null,
      maxRetriesPerRequest: 0,
      connectTimeout: SUBSCRIBER_CONNECT_TIMEOUT_MS,
    };
    const client = this.client;
    if (!(client instanceof Cluster)) return client.duplicate(options);
    // The owner may have changed (failover, resharding): ask the cluster afresh.
    await new Promise<void>((resolve) => client.refreshSlotsCache(() => resolve()));
    const slot = Number(await client.call("CLUSTER", "KEYSLOT", channel));
    const owner = client.slots[slot]?.[0];
    const node = client.nodes("master").find((n) => `${n.options.host}:${n.options.port}` === owner);
    if (node === undefined) throw new Error(`no master owns slot ${slot} of the broadcast channels`);
    return node.duplicate(options);
  }
}
