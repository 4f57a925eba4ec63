// WORKERS=2: the production entry point as a supervisor of two server processes
// sharing the ports. Revocation through one worker is seen by the other at once,
// /metrics sums both, a worker that dies is replaced, a worker that cannot start
// stops the service, and SIGTERM stops everything with exit code 0.
import { type ChildProcess, spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { type Client, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ApiKeyService, Role, VerifyCode } from "../../gen/apikeys/v1/apikeys_pb.js";
import { type TestDatabase, freshDatabase } from "../helpers/mysql.js";
import { TestRedis } from "../helpers/redis.js";
import { TEST_PEPPER } from "../helpers/server.js";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
const owner = { userId: "u_owner", role: Role.OWNER };

interface Supervised {
  proc: ChildProcess;
  lines: { msg?: string; grpcPort?: number; httpPort?: number; worker?: number; pid?: number }[];
  exited: Promise<number | null>;
}

function start(env: Record<string, string>): Supervised {
  const proc = spawn(process.execPath, ["--import", "tsx", "src/main.ts"], {
    cwd: ROOT,
    env: {
      ...process.env,
      KEY_PEPPER: TEST_PEPPER,
      ALLOW_UNAUTHENTICATED_CALLERS: "true",
      GRPC_PORT: "0",
      HTTP_PORT: "0",
      LOG_LEVEL: "info",
      WORKERS: "2",
      ...env,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const lines: Supervised["lines"] = [];
  let buffered = "";
  proc.stdout!.on("data", (chunk: Buffer) => {
    buffered += chunk.toString();
    const complete = buffered.split("\n");
    buffered = complete.pop()!;
    for (const line of complete) {
      try {
        lines.push(JSON.parse(line));
      } catch {
        // not a log line
      }
    }
  });
  proc.stderr!.resume();
  const exited = new Promise<number | null>((resolve) => proc.once("exit", (code) => resolve(code)));
  return { proc, lines, exited };
}

async function until(what: string, condition: () => boolean, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const count = (s: Supervised, msg: string) => s.lines.filter((l) => l.msg === msg).length;

/** The workers' pids, from their logs (the supervisor may have other children, e.g. tsx's esbuild). */
function workerPids(s: Supervised): number[] {
  const alive = (pid: number) => {
    try {
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  };
  return [...new Set(s.lines.filter((l) => l.msg === "apikeys listening").map((l) => l.pid!))].filter(alive);
}

/** The sum of a metric's samples in Prometheus text, for the lines that start with `prefix`. */
function metric(text: string, prefix: string): number {
  return text
    .split("\n")
    .filter((l) => l.startsWith(prefix))
    .reduce((sum, l) => sum + Number(l.slice(l.lastIndexOf(" ") + 1)), 0);
}

describe("WORKERS=2", () => {
  let db: TestDatabase;
  let redis: TestRedis;
  let s: Supervised;
  let clients: Client<typeof ApiKeyService>[];
  let httpPort: number;

  beforeAll(async () => {
    db = await freshDatabase();
    redis = await TestRedis.start();
    s = start({ MYSQL_URL: db.url, REDIS_URL: redis.url });
    await until("both workers serving", () => count(s, "all workers serving") === 1 || s.proc.exitCode !== null);
    const listening = s.lines.filter((l) => l.msg === "apikeys listening");
    expect(listening).toHaveLength(2);
    expect(workerPids(s)).toHaveLength(2);
    // Each worker's lines name it.
    expect(new Set(listening.map((l) => l.worker))).toEqual(new Set([1, 2]));
    // Both workers on the same ports.
    expect(new Set(listening.map((l) => `${l.grpcPort}/${l.httpPort}`)).size).toBe(1);
    httpPort = listening[0].httpPort!;
    // One connection per transport; the supervisor deals connections to the workers in turn.
    clients = Array.from({ length: 4 }, () =>
      createClient(ApiKeyService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${listening[0].grpcPort}` })),
    );
  }, 90_000);

  afterAll(async () => {
    s?.proc.kill("SIGKILL");
    await redis?.kill();
    await db?.drop();
  });

  it("serves through both workers; a revocation through one is seen by every connection when RevokeKey returns", async () => {
    const { key, secret } = await clients[0].createKey({ organizationId: "org_w", actor: owner, name: "w", scopes: ["a"] });
    // Every connection verifies it (each worker caches it).
    for (let round = 0; round < 3; round++) {
      for (const c of clients) expect((await c.verifyKey({ key: secret })).code).toBe(VerifyCode.VALID);
    }
    await clients[1].revokeKey({ organizationId: "org_w", keyId: key!.id, actor: owner });
    for (const c of clients) expect((await c.verifyKey({ key: secret })).code).toBe(VerifyCode.REVOKED);
  });

  it("/metrics sums every worker: both pools, and every verification whichever worker answered it", async () => {
    const before = await (await fetch(`http://127.0.0.1:${httpPort}/metrics`)).text();
    // Each worker's pool has its own limit; the sum is twice one.
    const single = metric(before, "apikeys_db_pool_max_connections");
    expect(single % 2).toBe(0);
    const { secret } = await clients[0].createKey({ organizationId: "org_w", actor: owner, name: "m" });
    for (let i = 0; i < 10; i++) for (const c of clients) await c.verifyKey({ key: secret });
    // Asked several times: whichever worker answers /metrics, it reports both.
    for (let i = 0; i < 4; i++) {
      const after = await (await fetch(`http://127.0.0.1:${httpPort}/metrics`)).text();
      expect(metric(after, 'apikeys_verify_outcomes_total{code="VALID"}') - metric(before, 'apikeys_verify_outcomes_total{code="VALID"}')).toBe(40);
      expect(metric(after, "apikeys_db_pool_max_connections")).toBe(single);
    }
  });

  it("replaces a worker that dies, and keeps serving meanwhile", async () => {
    const [victim] = workerPids(s);
    process.kill(victim, "SIGKILL");
    await until("the replacement serving", () => count(s, "all workers serving") === 2);
    expect(count(s, "worker died; starting another")).toBe(1);
    const pids = workerPids(s);
    expect(pids).toHaveLength(2);
    expect(pids).not.toContain(victim);
    const { secret } = await clients[2].createKey({ organizationId: "org_w", actor: owner, name: "after" });
    for (const c of clients) expect((await c.verifyKey({ key: secret })).code).toBe(VerifyCode.VALID);
  });

  it("SIGTERM stops every worker cleanly, then the supervisor: exit code 0", async () => {
    s.proc.kill("SIGTERM");
    expect(await s.exited).toBe(0);
    expect(count(s, "stopped")).toBe(2);
  });

  it("a worker that cannot start (no database) stops the service with a failure exit code", async () => {
    const failing = start({ MYSQL_URL: "mysql://root@127.0.0.1:1/nothing", REDIS_URL: redis.url });
    expect(await failing.exited).not.toBe(0);
    expect(count(failing, "worker failed to start; stopping")).toBeGreaterThanOrEqual(1);
  }, 60_000);
});
