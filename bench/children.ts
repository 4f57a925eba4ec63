// The processes a bench run starts: servers under test (bench/server.ts) and
// the Node load generator (bench/loadgen.ts).
import { spawn, spawnSync } from "node:child_process";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import type { Pause } from "./pauses.js";
import type { Latencies, ServerStats, Usage } from "./server.js";

const ROOT = fileURLToPath(new URL("..", import.meta.url));

/**
 * Compiles the server and load generator (and the service) into dist/, as
 * `npm run build` does. Compiled JavaScript, not tsx: served from the
 * compiled build, the no-op baseline answered about a fifth more calls per
 * second than the same server run through tsx (alternating runs, same
 * machine). Fails on type errors: code that does not build cannot ship, so
 * its numbers mean nothing.
 */
export function buildBench(): void {
  const tsc = spawnSync("npx", ["--no-install", "tsc", "-p", "bench/tsconfig.json"], { cwd: ROOT, encoding: "utf8" });
  if (tsc.status !== 0) throw new Error(`building the bench failed:\n${tsc.stdout}${tsc.stderr}`);
}

/** Node's arguments to run a compiled bench script (see buildBench). */
export function nodeArgs(script: "server" | "loadgen", extraNodeArgs: string[] = []): string[] {
  return [...extraNodeArgs, join(ROOT, "dist", "bench", `${script}.js`)];
}

export interface ServerChild {
  /** host:port of its gRPC port. */
  readonly target: string;
  stats(): Promise<ServerStats>;
  /** The store's and the broadcast's latencies since the last stats or latencies, without stats()'s full GC. */
  latencies(): Promise<Latencies>;
  /** The server's RSS in bytes, read without collecting garbage first (unlike stats). */
  rss(): Promise<number>;
  /** CPU time used and verifications answered so far, read without collecting garbage. */
  usage(): Promise<Usage>;
  /** Keys evicted by invalidations since the last call: key id → process.hrtime.bigint() (ns, as text). */
  evictions(): Promise<Record<string, string>>;
  /** Its GC pauses since the last call (service mode). */
  gcPauses(): Promise<Pause[]>;
  /** Graceful stop: in-flight calls drain, last-used times flush, a CPU profile is written. */
  stop(): Promise<void>;
  /** SIGSTOP: a stalled instance (a paused VM, a long GC); its connections stay open. */
  pause(): void;
  /** SIGCONT. */
  resume(): void;
}

export interface ServerOptions {
  env: Record<string, string>;
  /** Write a V8 CPU profile (node --cpu-prof) into this directory on stop. */
  cpuProfileDir?: string;
}

/** Starts bench/server.ts in `mode` and waits until it listens. */
export async function startServer(mode: "service" | "baseline", options: ServerOptions): Promise<ServerChild> {
  // --expose-gc only lets the stats command collect garbage before its second memory reading.
  const flags = ["--expose-gc", ...(options.cpuProfileDir ? ["--cpu-prof", `--cpu-prof-dir=${options.cpuProfileDir}`] : [])];
  const child = spawn(process.execPath, [...nodeArgs("server", flags), mode], {
    // Nothing from the bench's own environment: the server is configured by the bench alone.
    env: { PATH: process.env.PATH ?? "", ...options.env },
    stdio: ["pipe", "pipe", "inherit"],
  });
  const replies: ((line: Record<string, unknown>) => void)[] = [];
  const exited = new Promise<number | null>((resolve) => child.once("exit", resolve));
  const ready = new Promise<Record<string, unknown>>((resolve, reject) => {
    replies.push(resolve);
    exited.then((code) => reject(new Error(`bench server (${mode}) exited with ${code} before listening`)));
  });
  createInterface({ input: child.stdout! }).on("line", (line) => {
    const message = parseTagged(line);
    // Anything else is the service's own log: keep it visible.
    if (message === null) process.stderr.write(`[server ${child.pid}] ${line}\n`);
    else replies.shift()?.(message);
  });
  const hello = await ready;
  /** Sends a command line; resolves with what `pick` takes from its reply (replies come in order). */
  const ask = <T>(command: string, pick: (reply: Record<string, unknown>) => T) =>
    new Promise<T>((resolve) => {
      replies.push((m) => resolve(pick(m)));
      child.stdin!.write(`${command}\n`);
    });
  return {
    target: `127.0.0.1:${hello.grpcPort as number}`,
    stats: () => ask("stats", (m) => m as unknown as ServerStats),
    latencies: () => ask("latencies", (m) => m as unknown as Latencies),
    rss: () => ask("rss", (m) => m.rss as number),
    usage: () => ask("usage", (m) => m as unknown as Usage),
    evictions: () => ask("evictions", (m) => m.evictions as Record<string, string>),
    gcPauses: () => ask("pauses", (m) => m.pauses as Pause[]),
    pause: () => void child.kill("SIGSTOP"),
    resume: () => void child.kill("SIGCONT"),
    async stop() {
      if (child.exitCode !== null) return;
      child.stdin!.end("stop\n");
      const code = await exited;
      if (code !== 0) throw new Error(`bench server (${mode}) exited with ${code}`);
    },
  };
}

function parseTagged(line: string): Record<string, unknown> | null {
  if (!line.startsWith('{"bench":true')) return null;
  return JSON.parse(line) as Record<string, unknown>;
}

