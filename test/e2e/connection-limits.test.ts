// What one client can hold of each port, and that every refusal is counted:
// the gRPC port bounds streams per connection, idle connections and Health.Watch
// streams; the HTTP port bounds connections and how long a request may take to
// arrive (slowloris). Each attack is made against a real server, with small limits.
import * as http2 from "node:http2";
import { type Socket, connect } from "node:net";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { MemoryStore } from "../../src/store/memory-store.js";
import { type TestServer, startServer } from "../helpers/server.js";

const STREAMS = 8;
const WATCHES = 3;
const HTTP_CONNECTIONS = 5;

async function refusedCount(s: TestServer, reason: string): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${s.httpPort}/metrics`)).text();
  return Number(new RegExp(`^apikeys_refused_total\\{reason="${reason}"\\} (\\d+)$`, "m").exec(text)?.[1]);
}

function openSocket(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, "127.0.0.1", () => resolve(socket));
    socket.once("error", reject);
  });
}

/** Resolves with what the server sent before closing the socket, and how long that took. */
function closed(socket: Socket): Promise<{ data: string; afterMs: number }> {
  const start = Date.now();
  let data = "";
  socket.on("data", (d) => (data += d));
  socket.on("error", () => {});
  return new Promise((resolve) => socket.once("close", () => resolve({ data, afterMs: Date.now() - start })));
}

describe("connection and stream limits", () => {
  let s: TestServer;
  beforeAll(async () => {
    s = await startServer({
      store: new MemoryStore(),
      env: {
        GRPC_MAX_CONCURRENT_STREAMS: String(STREAMS),
        GRPC_MAX_CONNECTION_IDLE_SECONDS: "1",
        HEALTH_MAX_WATCHES: String(WATCHES),
        HTTP_MAX_CONNECTIONS: String(HTTP_CONNECTIONS),
        HTTP_HEADERS_TIMEOUT_SECONDS: "1",
        HTTP_REQUEST_TIMEOUT_SECONDS: "2",
      },
    });
  });
  afterAll(async () => {
    await s?.stop();
  });

  it("gRPC: tells every connection its stream limit, and serves no more streams than that at once", async () => {
    // Watch streams stay open: a server of its own, whose Watch limit is not the one in the way.
    const own = await startServer({ store: new MemoryStore(), env: { GRPC_MAX_CONCURRENT_STREAMS: String(STREAMS) } });
    const session = http2.connect(`http://127.0.0.1:${own.grpcPort}`);
    session.on("error", () => {});
    try {
      const settings = await new Promise<http2.Settings>((resolve) => session.once("remoteSettings", resolve));
      expect(settings.maxConcurrentStreams).toBe(STREAMS);
      // Twice as many Watch streams as allowed, on one connection: only STREAMS get an answer (their headers).
      let answered = 0;
      const streams = Array.from({ length: STREAMS * 2 }, () => {
        const stream = session.request({ ":method": "POST", ":path": "/grpc.health.v1.Health/Watch", "content-type": "application/grpc", te: "trailers" });
        stream.on("error", () => {});
        stream.once("response", () => answered++);
        stream.end(Buffer.from([0, 0, 0, 0, 0]));
        return stream;
      });
      await new Promise((r) => setTimeout(r, 1000));
      expect(answered).toBe(STREAMS);
      for (const stream of streams) stream.close();
    } finally {
      session.destroy();
      await own.stop();
    }
  });

  it("gRPC: closes a connection idle for GRPC_MAX_CONNECTION_IDLE_SECONDS", async () => {
    const session = http2.connect(`http://127.0.0.1:${s.grpcPort}`);
    session.on("error", () => {});
    const start = Date.now();
    const goaway = new Promise<number>((resolve) => session.once("goaway", () => resolve(Date.now() - start)));
    const ms = await Promise.race([goaway, new Promise<number>((r) => setTimeout(() => r(-1), 8000))]);
    session.destroy();
    expect(ms).toBeGreaterThan(0);
    expect(ms).toBeLessThan(6000);
  });

  it("gRPC: refuses Health.Watch streams beyond HEALTH_MAX_WATCHES with RESOURCE_EXHAUSTED, and counts them", async () => {
    const clients = Array.from({ length: WATCHES + 1 }, () => new grpc.Client(`127.0.0.1:${s.grpcPort}`, grpc.credentials.createInsecure()));
    const before = await refusedCount(s, "health_watch_limit");
    const calls: grpc.ClientReadableStream<Buffer>[] = [];
    try {
      for (const client of clients.slice(0, WATCHES)) {
        const call = client.makeServerStreamRequest("/grpc.health.v1.Health/Watch", (b: Buffer) => b, (b: Buffer) => b, Buffer.alloc(0));
        call.on("error", () => {});
        await new Promise((resolve) => call.once("data", resolve));
        calls.push(call);
      }
      const extra = clients[WATCHES].makeServerStreamRequest("/grpc.health.v1.Health/Watch", (b: Buffer) => b, (b: Buffer) => b, Buffer.alloc(0));
      const err = await new Promise<grpc.ServiceError>((resolve) => extra.once("error", resolve));
      expect(err.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
      expect(err.details).toContain("HEALTH_MAX_WATCHES");
      expect(await refusedCount(s, "health_watch_limit")).toBe(before + 1);
      // Check still answers.
      const health = new grpc.Client(`127.0.0.1:${s.grpcPort}`, grpc.credentials.createInsecure());
      const check = await new Promise<grpc.ServiceError | null>((resolve) =>
        health.makeUnaryRequest("/grpc.health.v1.Health/Check", (b: Buffer) => b, (b: Buffer) => b, Buffer.alloc(0), (e) => resolve(e)),
      );
      health.close();
      expect(check).toBeNull();
    } finally {
      for (const call of calls) call.cancel();
      for (const client of clients) client.close();
    }
  });

  it("HTTP: closes connections over HTTP_MAX_CONNECTIONS at once, and counts them", async () => {
    const before = await refusedCount(s, "http_connection_limit");
    const held = await Promise.all(Array.from({ length: HTTP_CONNECTIONS }, () => openSocket(s.httpPort)));
    try {
      await new Promise((r) => setTimeout(r, 100));
      const extra = await openSocket(s.httpPort);
      const { afterMs } = await closed(extra);
      expect(afterMs).toBeLessThan(1000);
    } finally {
      for (const socket of held) socket.destroy();
    }
    await new Promise((r) => setTimeout(r, 100));
    expect(await refusedCount(s, "http_connection_limit")).toBeGreaterThan(before);
  });

  it("HTTP: ends a request whose headers trickle in (slowloris) after HTTP_HEADERS_TIMEOUT_SECONDS with 408", async () => {
    const before = await refusedCount(s, "http_timeout");
    const socket = await openSocket(s.httpPort);
    socket.write("POST /apikeys.v1.ApiKeyService/VerifyKey HTTP/1.1\r\nHost: x\r\n");
    const trickle = setInterval(() => socket.writable && socket.write("X-Slow: 1\r\n"), 200);
    const { data, afterMs } = await closed(socket);
    clearInterval(trickle);
    expect(data).toMatch(/^HTTP\/1\.1 408/);
    expect(afterMs).toBeLessThan(4000);
    expect(await refusedCount(s, "http_timeout")).toBeGreaterThan(before);
  });

  it("HTTP: ends a request whose body trickles in after HTTP_REQUEST_TIMEOUT_SECONDS", async () => {
    const socket = await openSocket(s.httpPort);
    socket.write("POST /apikeys.v1.ApiKeyService/VerifyKey HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{");
    const trickle = setInterval(() => socket.writable && socket.write(" "), 200);
    const { afterMs } = await closed(socket);
    clearInterval(trickle);
    expect(afterMs).toBeLessThan(5000);
  });
});
