// A TCP proxy in front of one upstream (a private redis-server), so that a
// test can break one instance's network to it, and only that instance's:
// - cut():       every connection through the proxy is reset, and new ones are
//                reset as soon as they are accepted (a severed link, a dead
//                load balancer; the client sees errors at once);
// - blackHole(): the connections stay open but nothing moves in either direction,
//                and new connections are accepted but never reach the upstream
//                (a half-open connection, a silent partition: the upstream still
//                counts this client as connected, the client's writes go nowhere);
// - restore():   forwarding resumes. Black-holed connections pick up where they
//                stopped (what TCP does when a partition heals before it gives up);
//                cut ones are gone, as in real life.
import { type Server, type Socket, connect, createServer } from "node:net";

export type ProxyState = "open" | "cut" | "black-hole";

interface Pair {
  client: Socket;
  /** null while a connection accepted during a black hole waits for the upstream. */
  upstream: Socket | null;
}

export class TcpProxy {
  private state: ProxyState = "open";
  private readonly pairs = new Set<Pair>();
  /** Connections accepted so far (tests check that the client did reconnect through the proxy). */
  accepted = 0;

  private constructor(
    private readonly server: Server,
    readonly port: number,
    private readonly upstreamPort: number,
    private readonly upstreamHost: string,
  ) {}

  static async start(upstreamPort: number, upstreamHost = "127.0.0.1"): Promise<TcpProxy> {
    const server = createServer({ pauseOnConnect: true });
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(0, "127.0.0.1", () => resolve());
    });
    const proxy = new TcpProxy(server, (server.address() as { port: number }).port, upstreamPort, upstreamHost);
    server.on("connection", (client) => proxy.accept(client));
    return proxy;
  }

  /** What a client is given instead of the upstream's address. */
  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  get current(): ProxyState {
    return this.state;
  }

  /** Connections open through the proxy right now. */
  get connections(): number {
    return this.pairs.size;
  }

  cut(): void {
    this.state = "cut";
    for (const pair of [...this.pairs]) this.drop(pair);
  }

  blackHole(): void {
    this.state = "black-hole";
    for (const { client, upstream } of this.pairs) {
      client.pause();
      upstream?.pause();
    }
  }

  restore(): void {
    this.state = "open";
    for (const pair of this.pairs) {
      if (pair.upstream === null) this.link(pair);
      else {
        pair.client.resume();
        pair.upstream.resume();
      }
    }
  }

  async stop(): Promise<void> {
    this.cut();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private accept(client: Socket): void {
    client.on("error", () => {}); // a reset client: drop() cleans up on close
    if (this.state === "cut") {
      client.resetAndDestroy();
      return;
    }
    this.accepted++;
    const pair: Pair = { client, upstream: null };
    this.pairs.add(pair);
    client.once("close", () => this.drop(pair));
    // During a black hole the client has a connection (the handshake succeeded) and nothing else.
    if (this.state === "open") this.link(pair);
  }

  private link(pair: Pair): void {
    const upstream = connect(this.upstreamPort, this.upstreamHost);
    pair.upstream = upstream;
    upstream.on("error", () => {});
    upstream.once("close", () => this.drop(pair));
    // Data is written as it comes, in order; a paused side simply stops reading (the kernel buffers, then
    // TCP's window closes), which is what a black hole looks like from both ends.
    pair.client.on("data", (chunk) => upstream.write(chunk));
    upstream.on("data", (chunk) => pair.client.write(chunk));
    pair.client.resume();
  }

  private drop(pair: Pair): void {
    if (!this.pairs.delete(pair)) return;
    // A reset, not a FIN: the client learns at once, as from a broken link.
    if (!pair.client.destroyed) pair.client.resetAndDestroy();
    if (pair.upstream && !pair.upstream.destroyed) pair.upstream.resetAndDestroy();
  }
}
