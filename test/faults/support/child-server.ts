// The real service in its own process (src/main.ts, as `npm start` runs it),
// so that a test can kill -9 it: no shutdown hook, no flush, no goodbye.
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
  client: Client<typeof ApiKeyService>;
  /** kill -9, and wait for the process to be gone. */
  kill(): Promise<void>;
}

export async function startChildServer(env: { MYSQL_URL: string; REDIS_URL: string }): Promise<ChildServer> {
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
  const grpcPort = await new Promise<number>((resolve, reject) => {
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
      let entry: { msg?: string; grpcPort?: number };
      try {
        entry = JSON.parse(line);
      } catch {
        return;
      }
      if (entry.msg === "apikeys listening" && typeof entry.grpcPort === "number") {
        clearTimeout(timer);
        proc.off("exit", early);
        resolve(entry.grpcPort);
      }
    });
  });
  return {
    grpcPort,
    client: createClient(ApiKeyService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${grpcPort}` })),
    kill: () => killed(proc, exited),
  };
}

async function killed(proc: ChildProcess, exited: Promise<void>): Promise<void> {
  if (proc.exitCode === null && proc.signalCode === null) proc.kill("SIGKILL");
  await exited;
}
