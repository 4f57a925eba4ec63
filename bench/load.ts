// One way to put load on a server, whichever tool does it: h2load (C, one
// fixed request body) or the Node load generator (bench/loadgen.ts, any number
// of bodies, checks every answer). Both run in a process of their own.
import { spawn } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { runH2load } from "./h2load.js";
import { nodeArgs } from "./children.js";
import type { LoadResult, LoadSpec, Tool } from "./load-spec.js";
import type { Pause } from "./pauses.js";

export type { LoadResult, LoadSpec, Tool } from "./load-spec.js";

/** A gRPC length-prefixed message: flag 0 (uncompressed), big-endian length, bytes. */
export function grpcFrame(message: Uint8Array): Buffer {
  const frame = Buffer.allocUnsafe(5 + message.length);
  frame[0] = 0;
  frame.writeUInt32BE(message.length, 1);
  frame.set(message, 5);
  return frame;
}

export async function runLoad(tool: Tool, spec: LoadSpec): Promise<LoadResult> {
  const dir = await mkdtemp(join(tmpdir(), "apikeys-bench-"));
  try {
    const framesFile = join(dir, "frames.bin");
    await writeFile(framesFile, Buffer.concat(spec.frames));
    if (tool === "h2load") {
      if (spec.frames.length !== 1 || spec.once || spec.expectCode !== undefined) {
        throw new Error("h2load sends one fixed body and cannot check answers: use the Node load generator");
      }
      return await runH2load(spec, framesFile, join(dir, "h2load.log"));
    }
    return await runNodeLoad(spec, framesFile);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * The load generator's own pauses are in every latency it reports: a young
 * generation of 64 MB (instead of V8's 16 MB at most) scavenges a quarter as
 * often. Measured against the no-op baseline at 4 in flight, 3 runs each: p99
 * 1.99–2.11 ms with V8's default, 1.44–1.50 ms with this (128 MB: 1.64–1.73).
 */
const LOADGEN_NODE_FLAGS = ["--max-semi-space-size=64"];

/** What bench/loadgen.ts reads: the spec, with the frames in a file. */
export type NodeLoadJob = Omit<LoadSpec, "frames"> & { framesFile: string };

function runNodeLoad(spec: LoadSpec, framesFile: string): Promise<LoadResult> {
  const { frames: _, ...rest } = spec;
  const job: NodeLoadJob = { ...rest, framesFile };
  return loadgen<LoadResult>(JSON.stringify(job));
}

/** Runs bench/loadgen.ts with `argument`; resolves with the JSON line it prints. */
function loadgen<T>(argument: string): Promise<T> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...nodeArgs("loadgen", LOADGEN_NODE_FLAGS), argument], { stdio: ["ignore", "pipe", "inherit"] });
    let out = "";
    child.stdout.on("data", (chunk: Buffer) => (out += chunk.toString()));
    child.once("error", reject);
    child.once("exit", (code) => {
      if (code !== 0) reject(new Error(`the Node load generator exited with ${code}`));
      else resolve(JSON.parse(out) as T);
    });
  });
}

/** One gRPC call of a round: which server, which method, which request. */
export interface RoundCall {
  /** Index into RoundsSpec.targets. */
  target: number;
  path: string;
  frame: Buffer;
  /** The answer must be a VerifyKeyResponse with this code; otherwise grpc-status 0 is enough. */
  expectCode?: number;
}

/** A call whose latency is measured, then checks made right after it (together, not timed). */
export interface Round {
  call: RoundCall;
  then: RoundCall[];
}

export interface RoundsSpec {
  targets: string[];
  token: string;
  /** Made first, the same way, and not measured: code that has not run enough is not yet compiled. */
  warmup?: Round[];
  rounds: Round[];
}

export interface RoundsResult {
  /** Of each round's timed call, in ms, in order. */
  latencies: number[];
  /** When each measured round's call was sent: process.hrtime.bigint() (ns, as text), a clock every process shares. */
  sent: string[];
  seconds: number;
  /** Rounds (warm-up ones too) whose timed call failed, by reason (the run goes on). */
  failures: Record<string, number>;
  /** Measured rounds whose call and every check answered as expected. */
  passed: number;
  /** The load generator's own GC pauses during the measured rounds. */
  pauses: Pause[];
  /**
   * The share of the measured rounds' time during which some task on the machine was ready to run but
   * waiting for a CPU (Linux's CPU pressure); null where the kernel does not report it.
   */
  cpuWaitShare: number | null;
}

/** What bench/loadgen.ts reads in rounds mode: the rounds with each frame as an index into the frames file. */
export interface RoundsJob {
  rounds: true;
  targets: string[];
  token: string;
  framesFile: string;
  /** Each round's calls, the timed one first; the first `warmup` rounds are not measured. */
  calls: { target: number; path: string; frame: number; expectCode?: number }[][];
  warmup: number;
}

/**
 * Rounds one at a time from the Node load generator's process: bare node:http2
 * with the frames built in advance, like its load runs. A latency measured one
 * call at a time is mostly the client's own time and pauses: the same cached
 * VerifyKey, one at a time on this machine, took p50/p99 0.91/5.4 ms through a
 * Connect client in the bench's process, 0.53/3.5 through grpc-js, 0.28/2.4
 * through bare node:http2 and 0.16/0.48 from h2load; and the bare client's p99
 * fell from 3.2 to 0.9 ms after 5,000 calls rather than 300 to warm up.
 */
export async function runRounds(spec: RoundsSpec): Promise<RoundsResult> {
  const dir = await mkdtemp(join(tmpdir(), "apikeys-bench-"));
  try {
    // Each distinct frame once: warm-up rounds repeat the measured ones.
    const frames: Buffer[] = [];
    const at = new Map<Buffer, number>();
    const frameIndex = (frame: Buffer) => {
      let i = at.get(frame);
      if (i === undefined) at.set(frame, (i = frames.push(frame) - 1));
      return i;
    };
    const index = (c: RoundCall) => ({ target: c.target, path: c.path, frame: frameIndex(c.frame), expectCode: c.expectCode });
    const warmup = spec.warmup ?? [];
    const calls = [...warmup, ...spec.rounds].map((r) => [index(r.call), ...r.then.map(index)]);
    const job: RoundsJob = { rounds: true, targets: spec.targets, token: spec.token, framesFile: join(dir, "frames.bin"), calls, warmup: warmup.length };
    await writeFile(job.framesFile, Buffer.concat(frames));
    const jobFile = join(dir, "job.json");
    await writeFile(jobFile, JSON.stringify(job));
    return await loadgen<RoundsResult>(`@${jobFile}`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
