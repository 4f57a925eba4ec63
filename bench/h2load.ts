// h2load (nghttp2's HTTP/2 load tester) sending real gRPC requests: one fixed
// body, a gRPC length-prefixed message, POSTed with gRPC's headers. It reports
// throughput and HTTP status only; latency percentiles come from its per-request
// log, and whether the answers were right is checked by the caller (response
// bytes per request here, a real client before and after).
import { spawn, spawnSync } from "node:child_process";
import { readFile, rm } from "node:fs/promises";
import type { LoadResult, LoadSpec } from "./load-spec.js";
import { Samples } from "./stats.js";

function installed(): boolean {
  return spawnSync("h2load", ["--version"], { stdio: "ignore" }).status === 0;
}

/** True when h2load can be used, installing Debian's nghttp2-client if allowed and needed. */
export function ensureH2load(install: boolean): boolean {
  if (installed() || !install) return installed();
  process.stderr.write("h2load is missing: installing nghttp2-client with apt-get…\n");
  const env = { ...process.env, DEBIAN_FRONTEND: "noninteractive" };
  for (const args of [["update", "-qq"], ["install", "-y", "-qq", "--no-install-recommends", "nghttp2-client"]]) {
    if (spawnSync("apt-get", args, { stdio: ["ignore", "ignore", "inherit"], env }).status !== 0) return false;
  }
  return installed();
}

function durationArg(seconds: number): string {
  return `${Math.max(1, Math.round(seconds * 1000))}ms`;
}

export async function runH2load(spec: LoadSpec, framesFile: string, logFile: string): Promise<LoadResult> {
  // A run of its own rather than --warm-up-time, whose requests h2load leaves
  // out of the request count but not out of the bytes received.
  if (spec.warmupS > 0) await h2load(spec, framesFile, logFile, spec.warmupS);
  // h2load appends to its log: without this the warm-up's latencies would count too.
  await rm(logFile, { force: true });
  return parse(await h2load(spec, framesFile, logFile, spec.durationS), await readFile(logFile, "utf8"));
}

/** Runs h2load for `seconds`; resolves with what it printed. */
function h2load(spec: LoadSpec, framesFile: string, logFile: string, seconds: number): Promise<string> {
  const clients = Math.min(spec.connections, spec.inFlight);
  const args = [
    "--threads=1",
    `--clients=${clients}`,
    `--max-concurrent-streams=${Math.ceil(spec.inFlight / clients)}`,
    `--duration=${durationArg(seconds)}`,
    `--data=${framesFile}`,
    "--header=content-type: application/grpc",
    "--header=te: trailers",
    `--header=authorization: Bearer ${spec.token}`,
    `--log-file=${logFile}`,
  ];
  // --rps is per client.
  if (spec.rate > 0) args.push(`--rps=${(spec.rate / clients).toFixed(2)}`);
  args.push(`http://${spec.target}${spec.path}`);
  return new Promise<string>((resolve, reject) => {
    const child = spawn("h2load", args, { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    child.stdout.on("data", (chunk: Buffer) => (out += chunk.toString()));
    child.stderr.on("data", (chunk: Buffer) => (out += chunk.toString()));
    child.once("error", reject);
    child.once("exit", (code) => (code === 0 ? resolve(out) : reject(new Error(`h2load exited with ${code}:\n${out}`))));
  });
}

function match(output: string, pattern: RegExp): RegExpExecArray {
  const m = pattern.exec(output);
  if (!m) throw new Error(`unexpected h2load output (no ${pattern}):\n${output}`);
  return m;
}

/** The summary h2load prints, and percentiles from its log (start µs, HTTP status, duration µs per line). */
function parse(output: string, log: string): LoadResult {
  const [, rps] = match(output, /finished in [\d.]+m?s, ([\d.]+) req\/s/);
  const [, started, done, succeeded, failed, errored, timedOut] = match(
    output,
    /requests: \d+ total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout/,
  );
  const [, dataBytes] = match(output, /traffic: .*?, .*? \((\d+)\) data/);
  const latencies = new Samples();
  for (const line of log.split("\n")) {
    const [, status, micros] = line.split("\t");
    if (status === "200") latencies.add(Number(micros) / 1000);
  }
  const failures: Record<string, number> = {};
  const notOk = Number(done) - Number(succeeded);
  if (notOk > 0) failures["HTTP status not 2xx"] = notOk;
  if (Number(failed) > 0) failures.failed = Number(failed);
  if (Number(errored) > 0) failures.errored = Number(errored);
  if (Number(timedOut) > 0) failures.timeout = Number(timedOut);
  const requests = Number(done);
  return {
    tool: "h2load",
    requests,
    failed: Object.values(failures).reduce((a, b) => a + b, 0),
    failures,
    rps: Number(rps),
    p50Ms: latencies.percentile(50),
    p99Ms: latencies.percentile(99),
    // Every answer is one message: five bytes of gRPC framing each.
    bytesPerResponse: requests === 0 ? 0 : Number(dataBytes) / requests - 5,
    // Answers under way when --duration ended are in the data count but not in `done` (on a loaded machine,
    // dozens of 64 in flight in a half-second smoke run: 203–559 "bytes" per 183-byte answer).
    bytesPerResponseLow: requests === 0 ? 0 : Number(dataBytes) / Math.max(requests, Number(started)) - 5,
  };
}
