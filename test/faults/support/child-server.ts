// The real service in its own process (src/main.ts, as `npm start` runs it),
// so that a test can kill -9 it (no shutdown hook, no flush, no goodbye) or
// stall it with SIGSTOP (a paused VM, a long GC: its sockets stay open, the
// kernel keeps acknowledging, and nothing in it runs) and resume it.
import { type ChildProcess, spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { type Client, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { ApiKeyService } from "../../../gen/apikeys/v1/apikeys_pb.js";
import { TEST_PEPPER } from "../../helpers/server.js";

const ROOT = fileURLToPath(new URL("../../../", import.meta.url));
/** tsx compiles on start; on a busy machine that takes seconds. */
const START_TIMEOUT_MS = 60_000;

export interface ChildServer {
  grpcPort: number;
  httpPort: number;
  pid: number;
  client: Client<typeof ApiKeyService>;
  /** kill -9, and wait for the process to be gone. */
  kill(): Promise<void>;
  /** False once the process has exited, by itself or killed; with what it wrote to stderr. */
  alive(): boolean;
  stderr(): string;
  /** SIGSTOP: the process stops running at once; its connections stay open. */
  pause(): void;
  /** SIGCONT. */
  resume(): void;
  /** Its Prometheus metrics (GET /metrics on the HTTP port), as text. */
  metrics(): Promise<string>;
}

/** MYSQL_URL and REDIS_URL, and any other configuration (CACHE_LEASE_MS…). */
export type ChildEnv = { MYSQL_URL: string; REDIS_URL: string } & Record<string, string>;

export async function startChildServer(env: ChildEnv): Promise<ChildServer> {
  const proc = spawn(process.execPath, ["--import", "tsx", "src/main.ts"], {
    cwd: ROOT,
    env: {
      ...process.env,
      ...env,
      KEY_PEPPER: TEST_PEPPER,
      ALLOW_UNAUTHENTICATED_CALLERS: "true",
      GRPC_PORT: "0",
      HTTP_PORT: "0",
      LOG_LEVEL: "info",
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const stderr: string[] = [];
  proc.stderr!.on("data", (chunk: Buffer) => stderr.push(chunk.toString()));
  const exited = new Promise<void>((resolve) => proc.once("exit", () => resolve()));
  const { grpcPort, httpPort } = await new Promise<{ grpcPort: number; httpPort: number }>((resolve, reject) => {
    const timer = setTimeout(() => fail(new Error(`the service did not start in ${START_TIMEOUT_MS} ms`)), START_TIMEOUT_MS);
    const fail = (err: Error) => {
      clearTimeout(timer);
      proc.kill("SIGKILL");
      reject(new Error(`${err.message}\n${stderr.join("")}`));
    };
    const early = (code: number | null) => fail(new Error(`the service exited with ${code} before listening`));
    proc.once("exit", early);
    // The service logs one JSON object per line; "apikeys listening" carries the ports.
    createInterface({ input: proc.stdout! }).on("line", (line) => {
      let entry: { msg?: string; grpcPort?: number; httpPort?: number };
      try {
        entry = JSON.parse(line);
      } catch {
        return;
      }
      if (entry.msg === "apikeys listening" && typeof entry.grpcPort === "number" && typeof entry.httpPort === "number") {
        clearTimeout(timer);
        proc.off("exit", early);
        resolve({ grpcPort: entry.grpcPort, httpPort: entry.httpPort });
      }
    });
  });
  return {
    grpcPort,
    httpPort,
    pid: proc.pid!,
    client: createClient(ApiKeyService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${grpcPort}` })),
    kill: () => killed(proc, exited),
    alive: () => proc.exitCode === null && proc.signalCode === null,
    stderr: () => stderr.join(""),
    pause: () => void proc.kill("SIGSTOP"),
    resume: () => void proc.kill("SIGCONT"),
    metrics: async () => {
      const res = await fetch(`http://127.0.0.1:${httpPort}/metrics`);
      if (!res.ok) throw new Error(`GET /metrics: ${res.status}`);
      return res.text();
    },
  };
}

async function killed(proc: ChildProcess, exited: Promise<void>): Promise<void> {
  // A stopped process dies of SIGKILL too; no SIGCONT needed.
  if (proc.exitCode === null && proc.signalCode === null) proc.kill("SIGKILL");
  await exited;
}
