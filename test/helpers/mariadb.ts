// A TCP proxy in front of the local MariaDB that a test controls, to make the
// database unreachable or unresponsive for one server without touching anyone
// else's connections (the MariaDB server is shared by every test file).
//
//   cut()      drops every connection and resets new ones: a stopped server
//   hang()     holds every connection, old and new, without a byte either way:
//              a database (or network path) that stopped answering
//   restore()  forwards new connections again. Connections held by hang()
//              stay held until close(), like flows a failover or a firewall
//              forgot: a client must give up on them by itself.
import { type Server, type Socket, connect, createServer } from "node:net";

const SERVER_URL = new URL(process.env.MYSQL_TEST_URL ?? "mysql://root@127.0.0.1:3306");

type Mode = "forward" | "cut" | "hang";

export class DbProxy {
  private mode: Mode = "forward";
  /** Live forwarded connections: client side → server side, and how to stop forwarding between them. */
  private readonly pairs = new Map<Socket, { upstream: Socket; forget: () => void }>();
  /** Connections a hang holds; never forwarded again. */
  private readonly held = new Set<Socket>();

  private constructor(
    private readonly server: Server,
    readonly port: number,
  ) {}

  static async start(): Promise<DbProxy> {
    const server = createServer();
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(0, "127.0.0.1", () => resolve());
    });
    const proxy = new DbProxy(server, (server.address() as { port: number }).port);
    server.on("connection", (client) => proxy.accept(client));
    return proxy;
  }

  /** The URL of `database` through this proxy (same user as the test server URL). */
  url(database: string): string {
    const url = new URL(SERVER_URL);
    url.host = `127.0.0.1:${this.port}`;
    url.pathname = `/${database}`;
    return url.toString();
  }

  cut(): void {
    this.mode = "cut";
    for (const [client, { upstream }] of this.pairs) {
      client.resetAndDestroy();
      upstream.destroy();
    }
    this.pairs.clear();
  }

  hang(): void {
    this.mode = "hang";
    for (const client of [...this.pairs.keys()]) this.hold(client);
  }

  restore(): void {
    this.mode = "forward";
  }

  async close(): Promise<void> {
    this.cut();
    for (const s of this.held) s.destroy();
    this.held.clear();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private accept(client: Socket): void {
    client.on("error", () => {}); // resets are what this proxy is for
    if (this.mode === "cut") return void client.resetAndDestroy();
    if (this.mode === "hang") {
      client.pause();
      this.held.add(client);
      return;
    }
    const upstream = connect(Number(SERVER_URL.port || 3306), SERVER_URL.hostname);
    upstream.on("error", () => client.destroy());
    const close = () => {
      this.pairs.delete(client);
      client.destroy();
      upstream.destroy();
    };
    const forget = () => {
      client.off("close", close);
      upstream.off("close", close);
      client.unpipe(upstream);
      upstream.unpipe(client);
    };
    this.pairs.set(client, { upstream, forget });
    client.once("close", close);
    upstream.once("close", close);
    client.pipe(upstream);
    upstream.pipe(client);
  }

  /** Stops forwarding a live connection and keeps its client side open, unread. */
  private hold(client: Socket): void {
    const pair = this.pairs.get(client);
    if (!pair) return;
    this.pairs.delete(client);
    pair.forget();
    client.pause();
    this.held.add(client);
    // The server side is closed quietly: the client never hears of it.
    pair.upstream.destroy();
  }
}
