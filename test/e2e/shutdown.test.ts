// Graceful shutdown loses nothing: calls in flight when it begins complete,
// health says NOT_SERVING first, new connections are refused, last-used times
// are written; and the production entry point does all that on SIGTERM.
import { type ChildProcess, spawn } from "node:child_process";
import * as net from "node:net";
import { afterAll, describe, expect, it } from "vitest";
import { Role, VerifyCode } from "../../gen/apikeys/v1/apikeys_pb.js";
import { MySqlStore } from "../../src/store/mysql-store.js";
import type { Store } from "../../src/keys/ports.js";
import { HealthClient } from "../helpers/grpc-probes.js";
import { freshDatabase } from "../helpers/mysql.js";
import { TEST_PEPPER, startServer } from "../helpers/server.js";

const owner = { userId: "u_owner", role: Role.OWNER };
const DELAY_MS = 300;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(condition: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await sleep(10);
  }
}

/** Resolves with the connection error code, e.g. "ECONNREFUSED" ("connected" if it was accepted). */
function tryConnect(port: number): Promise<string> {
  return new Promise((resolve) => {
    const socket = net.connect(port, "127.0.0.1");
    socket.once("connect", () => {
      socket.destroy();
      resolve("connected");
    });
    socket.once("error", (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
  });
}

/** The store, with lookups and inserts held for DELAY_MS: calls stay in flight long enough to be caught by a shutdown. */
function slowed(store: MySqlStore): { store: Store; inFlight: () => number } {
  let inFlight = 0;
  const hold = async <T>(work: () => Promise<T>): Promise<T> => {
    inFlight++;
    try {
      await sleep(DELAY_MS);
      return await work();
    } finally {
      inFlight--;
    }
  };
  const wrapped: Store = Object.create(store);
  wrapped.findByHash = (hash) => hold(() => store.findByHash(hash));
  wrapped.createKey = (input) => hold(() => store.createKey(input));
  return { store: wrapped, inFlight: () => inFlight };
}

describe("graceful shutdown", () => {
  it("completes every call in flight on both ports, tells health checkers first, refuses new connections, flushes last-used", async () => {
    const db = await freshDatabase();
    const mysql = await MySqlStore.open(db.url);
    await mysql.migrate();
    const { store, inFlight } = slowed(mysql);
    const s = await startServer({
      store,
      databaseUrl: db.url,
      // No cache: every verification reaches the (slowed) store. Last-used only on shutdown.
      env: { CACHE_MAX_ENTRIES: "0", LAST_USED_FLUSH_SECONDS: "3600", SHUTDOWN_GRACE_SECONDS: "10" },
    });
    const health = new HealthClient(`127.0.0.1:${s.grpcPort}`);
    try {
      const { secret, key } = await s.grpc.call("createKey", { organizationId: "org_s", actor: owner, name: "drained" });
      const watch = health.watch("");
      await until(() => watch.statuses.length === 1);

      const calls: Promise<unknown>[] = [];
      for (let i = 0; i < 14; i++) {
        calls.push(s.grpc.call("verifyKey", { key: secret }).then((r) => expect(r.code).toBe(VerifyCode.VALID)));
      }
      for (let i = 0; i < 3; i++) {
        calls.push(s.grpc.call("createKey", { organizationId: "org_s", actor: owner, name: `late ${i}` }).then((r) => expect(r.secret).not.toBe("")));
      }
      for (let i = 0; i < 3; i++) {
        calls.push(s.connect.verifyKey({ key: secret }).then((r) => expect(r.code).toBe(VerifyCode.VALID)));
      }
      await until(() => inFlight() === 20);

      const started = performance.now();
      const stopped = s.app.stop();
      // While the calls drain: no new connections on either port.
      expect(await tryConnect(s.grpcPort)).toBe("ECONNREFUSED");
      expect(await tryConnect(s.httpPort)).toBe("ECONNREFUSED");
      expect(inFlight()).toBe(20);

      const results = await Promise.allSettled(calls);
      expect(results.filter((r) => r.status === "rejected")).toEqual([]);
      await stopped;
      // Drained, not forced: open Watch streams were told and ended instead of holding the server for the grace period.
      expect(performance.now() - started).toBeLessThan(5000);
      expect(watch.statuses).toEqual(["SERVING", "NOT_SERVING"]);
      expect((await watch.ended).code).toBe(0);

      const reopened = await MySqlStore.open(db.url);
      try {
        expect((await reopened.getKey("org_s", key!.id))?.lastUsedTime).not.toBeNull();
      } finally {
        await reopened.close();
      }
    } finally {
      health.close();
      await s.stop();
      await db.drop();
    }
  });
});

describe("SIGTERM", () => {
  let proc: ChildProcess | null = null;
  afterAll(() => {
    proc?.kill("SIGKILL");
  });

  it("the production entry point drains, logs and exits 0", async () => {
    const db = await freshDatabase();
    try {
      proc = spawn(process.execPath, ["--import", "tsx", "src/main.ts"], {
        env: {
          ...process.env,
          KEY_PEPPER: TEST_PEPPER,
          ALLOW_UNAUTHENTICATED_CALLERS: "true",
          MYSQL_URL: db.url,
          GRPC_PORT: "0",
          HTTP_PORT: "0",
          LOG_LEVEL: "info",
        },
        stdio: ["ignore", "pipe", "pipe"],
      });
      let out = "";
      proc.stdout!.on("data", (d) => (out += d));
      proc.stderr!.on("data", (d) => (out += d));
      await until(() => out.includes('"msg":"apikeys listening"') || proc!.exitCode !== null, 20_000);
      expect(out).toContain('"msg":"apikeys listening"');

      const exited = new Promise<number | null>((resolve) => proc!.once("exit", (code) => resolve(code)));
      proc.kill("SIGTERM");
      expect(await exited).toBe(0);
      const messages = out
        .trim()
        .split("\n")
        .map((l) => JSON.parse(l) as { msg: string });
      expect(messages.map((m) => m.msg)).toEqual(expect.arrayContaining(["shutting down", "stopped"]));
    } finally {
      await db.drop();
    }
  });
});
