// The fault tests' TCP proxy (support/tcp-proxy.ts) does what they rely on: a
// cut fails the client at once, a black hole keeps the connection open on both
// ends while nothing moves, and a restore resumes it where it stopped.
import { once } from "node:events";
import { connect } from "node:net";
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TestRedis } from "../helpers/redis.js";
import { sleep, until } from "./support/load.js";
import { TcpProxy } from "./support/tcp-proxy.js";

describe("TCP proxy in front of a private Redis", () => {
  let redis: TestRedis;
  let admin: Redis;

  beforeAll(async () => {
    redis = await TestRedis.start();
    admin = new Redis(redis.url);
  });

  afterAll(async () => {
    admin?.disconnect();
    await redis?.kill();
  });

  /** A client through the proxy that fails fast instead of queueing, and does not reconnect by itself. */
  const through = async (proxy: TcpProxy, name: string) => {
    const client = new Redis(proxy.url, { maxRetriesPerRequest: 0, enableOfflineQueue: false, retryStrategy: () => null, connectionName: name, lazyConnect: true });
    client.on("error", () => {});
    await client.connect();
    return client;
  };
  const connectedAs = async (name: string) => ((await admin.client("LIST")) as string).includes(`name=${name} `);

  it("forwards, and a cut fails the client at once and refuses new connections", async () => {
    const proxy = await TcpProxy.start(redis.port);
    const client = await through(proxy, "cut-me");
    try {
      expect(await client.ping()).toBe("PONG");
      expect(await connectedAs("cut-me")).toBe(true);
      proxy.cut();
      await until("the client sees the connection end", () => client.status === "end" || client.status === "close", 1000);
      await until("Redis no longer lists the client", async () => !(await connectedAs("cut-me")), 1000);
      const again = new Redis(proxy.url, { lazyConnect: true, retryStrategy: () => null, maxRetriesPerRequest: 0 });
      again.on("error", () => {});
      await expect(again.connect()).rejects.toThrow();
      again.disconnect();
    } finally {
      client.disconnect();
      await proxy.stop();
    }
  });

  it("black-holes: both ends keep the connection, nothing moves, and restore delivers what waited", async () => {
    const proxy = await TcpProxy.start(redis.port);
    const client = await through(proxy, "hole");
    try {
      await client.set("proxy:k", "before");
      proxy.blackHole();
      const pending = client.set("proxy:k", "during");
      const answered = await Promise.race([pending.then(() => true), sleep(500).then(() => false)]);
      expect(answered).toBe(false);
      // Half-open: Redis still has the client, the client still thinks it is connected, the write never arrived.
      expect(await connectedAs("hole")).toBe(true);
      expect(client.status).toBe("ready");
      expect(await admin.get("proxy:k")).toBe("before");
      // A new connection is accepted (the TCP handshake is the proxy's) and goes nowhere.
      const accepted = proxy.accepted;
      const late = connect(proxy.port, "127.0.0.1");
      await once(late, "connect");
      late.write("PING\r\n");
      const replies: Buffer[] = [];
      late.on("data", (chunk: Buffer) => replies.push(chunk));
      await sleep(300);
      expect(replies).toEqual([]);
      expect(proxy.accepted).toBe(accepted + 1);

      proxy.restore();
      expect(await pending).toBe("OK");
      expect(await admin.get("proxy:k")).toBe("during");
      expect(await client.ping()).toBe("PONG");
      await until("the held connection reaches Redis", () => replies.length > 0, 1000);
      expect(Buffer.concat(replies).toString()).toBe("+PONG\r\n");
      late.destroy();
    } finally {
      client.disconnect();
      await proxy.stop();
    }
  });
});
