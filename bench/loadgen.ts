// The Node load generator, run in its own process by bench/load.ts, for what
// h2load cannot do: many different request bodies (a key each), and a check of
// every answer's grpc-status and, optionally, its VerifyKeyResponse code. gRPC
// over bare node:http2 with the frames built in advance keeps it cheap: it
// drives the no-op baseline several times faster than the scenarios it is used
// for ("load generator headroom" in the table), though not faster than h2load.
// Given "@<job file>", it makes calls one at a time instead (rounds mode, see
// runRounds in load.ts), for latencies that should be the servers' and not a
// heavy client's.
import { readFileSync } from "node:fs";
import * as http2 from "node:http2";
import { BinaryReader } from "@bufbuild/protobuf/wire";
import type { LoadResult, NodeLoadJob, RoundsJob, RoundsResult } from "./load.js";
import { recordGcPauses } from "./pauses.js";
import { Samples } from "./stats.js";

/** Splits concatenated gRPC frames. */
function splitFrames(bytes: Buffer): Buffer[] {
  const frames: Buffer[] = [];
  for (let at = 0; at < bytes.length; ) {
    const end = at + 5 + bytes.readUInt32BE(at + 1);
    frames.push(bytes.subarray(at, end));
    at = end;
  }
  return frames;
}

/** Field 2 (code) of a VerifyKeyResponse, read without decoding the rest; 0 when absent. */
function verifyCodeOf(message: Uint8Array): number {
  const reader = new BinaryReader(message);
  while (reader.pos < reader.len) {
    const [field, wireType] = reader.tag();
    if (field === 2) return reader.int32();
    reader.skip(wireType);
  }
  return 0;
}

async function run(job: NodeLoadJob): Promise<LoadResult> {
  const frames = splitFrames(readFileSync(job.framesFile));
  const url = `http://${job.target}`;
  const sessions = Array.from({ length: job.connections }, () => http2.connect(url));
  await Promise.all(sessions.map((s) => new Promise((resolve, reject) => s.once("connect", resolve).once("error", reject))));
  const headers = {
    ":method": "POST",
    ":path": job.path,
    "content-type": "application/grpc",
    te: "trailers",
    authorization: `Bearer ${job.token}`,
  };

  const latencies = new Samples();
  const failures: Record<string, number> = {};
  let measuring = job.once === true || job.warmupS === 0;
  let requests = 0;
  let failed = 0;
  let bytes = 0;
  let sent = 0;
  let inFlight = 0;
  let sending = true;
  let finished: () => void = () => {};
  const done = new Promise<void>((resolve) => (finished = resolve));

  const fail = (why: string) => {
    failed++;
    failures[why] = (failures[why] ?? 0) + 1;
  };

  const send = () => {
    const frame = frames[sent % frames.length];
    const session = sessions[sent % sessions.length];
    sent++;
    inFlight++;
    const counted = measuring;
    const start = performance.now();
    request(session, headers, frame, (stream, status, body) => {
      inFlight--;
      if (counted) {
        requests++;
        latencies.add(performance.now() - start);
        bytes += Math.max(0, body.length - 5);
        const failure = outcome(stream, status, body, job.expectCode);
        if (failure !== null) fail(failure);
      }
      next();
    });
  };

  // Closed loop: each answer makes room for the next request. With a rate,
  // the clock paces requests instead (open loop) and the in-flight bound only
  // caps how far behind it may fall.
  const next = () => {
    if (job.once) {
      if (sent < frames.length) send();
      else if (inFlight === 0) finished();
      return;
    }
    if (!sending) {
      if (inFlight === 0) finished();
      return;
    }
    if (job.rate === 0) send();
  };

  const startedAt = performance.now();
  let measureFrom = startedAt;
  if (!job.once) {
    setTimeout(() => {
      measuring = true;
      measureFrom = performance.now();
      setTimeout(() => {
        sending = false;
        if (inFlight === 0) finished();
      }, job.durationS * 1000);
    }, job.warmupS * 1000);
  }
  if (job.rate > 0 && !job.once) {
    const pacer = setInterval(() => {
      if (!sending) return clearInterval(pacer);
      const due = Math.floor(((performance.now() - startedAt) * job.rate) / 1000);
      while (sent < due && inFlight < job.inFlight) send();
    }, 1);
  } else {
    for (let i = 0; i < job.inFlight && (!job.once || i < frames.length); i++) send();
  }
  await done;
  const seconds = (performance.now() - measureFrom) / 1000;
  for (const s of sessions) s.close();
  return {
    tool: "node",
    requests,
    failed,
    failures,
    rps: requests / seconds,
    p50Ms: latencies.percentile(50),
    p99Ms: latencies.percentile(99),
    bytesPerResponse: requests === 0 ? 0 : bytes / requests,
  };
}

/** Sends one gRPC request; `closed` gets the stream, its grpc-status and the answer's bytes once it is over. */
function request(
  session: http2.ClientHttp2Session,
  headers: http2.OutgoingHttpHeaders,
  frame: Buffer,
  closed: (stream: http2.ClientHttp2Stream, status: string | undefined, body: Buffer) => void,
): void {
  const stream = session.request(headers, { endStream: false });
  let status: string | undefined;
  const chunks: Buffer[] = [];
  stream.on("response", (h) => (status = h["grpc-status"] as string | undefined)); // trailers-only answer
  stream.on("trailers", (t) => (status = t["grpc-status"] as string | undefined));
  stream.on("data", (chunk: Buffer) => chunks.push(chunk));
  stream.on("error", () => {}); // reported through the rstCode outcome() reads
  stream.on("close", () => closed(stream, status, chunks.length === 1 ? chunks[0] : Buffer.concat(chunks)));
  stream.end(frame);
}

/** A finished call's outcome: null when it answered as expected, else why not. */
function outcome(stream: http2.ClientHttp2Stream, status: string | undefined, body: Buffer, expectCode?: number): string | null {
  if (stream.rstCode !== http2.constants.NGHTTP2_NO_ERROR) return `stream reset ${stream.rstCode}`;
  if (status !== "0") return `grpc-status ${status}`;
  if (expectCode === undefined) return null;
  const code = verifyCodeOf(body.subarray(5));
  return code === expectCode ? null : `code ${code}`;
}

/** One call, its outcome once it is over. */
function oneCall(session: http2.ClientHttp2Session, headers: http2.OutgoingHttpHeaders, frame: Buffer, expectCode?: number): Promise<string | null> {
  return new Promise((resolve) => request(session, headers, frame, (stream, status, body) => resolve(outcome(stream, status, body, expectCode))));
}

/** Rounds one at a time (see runRounds in load.ts): each round's first call timed, its checks made together after it. */
async function rounds(job: RoundsJob): Promise<RoundsResult> {
  const frames = splitFrames(readFileSync(job.framesFile));
  const sessions = job.targets.map((t) => http2.connect(`http://${t}`));
  await Promise.all(sessions.map((s) => new Promise((resolve, reject) => s.once("connect", resolve).once("error", reject))));
  const byPath = new Map<string, http2.OutgoingHttpHeaders>();
  const headers = (path: string) => {
    let h = byPath.get(path);
    if (h === undefined) {
      h = { ":method": "POST", ":path": path, "content-type": "application/grpc", te: "trailers", authorization: `Bearer ${job.token}` };
      byPath.set(path, h);
    }
    return h;
  };
  const latencies: number[] = [];
  const sent: string[] = [];
  const failures: Record<string, number> = {};
  let passed = 0;
  let started = performance.now();
  const gcPauses = recordGcPauses();
  let cpuWaitFrom = cpuWaitMicros();
  for (let r = 0; r < job.calls.length; r++) {
    const measured = r >= job.warmup;
    if (r === job.warmup) {
      started = performance.now();
      gcPauses();
      cpuWaitFrom = cpuWaitMicros();
    }
    const [call, ...checks] = job.calls[r];
    if (measured) sent.push(String(process.hrtime.bigint()));
    const t = performance.now();
    const failure = await oneCall(sessions[call.target], headers(call.path), frames[call.frame], call.expectCode);
    if (measured) latencies.push(performance.now() - t);
    if (failure !== null) {
      failures[failure] = (failures[failure] ?? 0) + 1;
      continue;
    }
    const outcomes = await Promise.all(checks.map((c) => oneCall(sessions[c.target], headers(c.path), frames[c.frame], c.expectCode)));
    if (measured && outcomes.every((o) => o === null)) passed++;
  }
  const seconds = (performance.now() - started) / 1000;
  const cpuWaitTo = cpuWaitMicros();
  for (const s of sessions) s.close();
  const cpuWaitShare = cpuWaitFrom === null || cpuWaitTo === null ? null : (cpuWaitTo - cpuWaitFrom) / 1e6 / seconds;
  return { latencies, sent, seconds, failures, passed, pauses: gcPauses(), cpuWaitShare };
}

/**
 * Linux's CPU pressure (PSI, /proc/pressure/cpu): for how long, in all, at least one task on the machine was
 * ready to run but waiting for a CPU (µs since boot); null where the kernel does not say.
 */
function cpuWaitMicros(): number | null {
  try {
    const some = /^some .*total=(\d+)/m.exec(readFileSync("/proc/pressure/cpu", "utf8"));
    return some ? Number(some[1]) : null;
  } catch {
    return null;
  }
}

const argument = process.argv[2];
(argument.startsWith("@") ? rounds(JSON.parse(readFileSync(argument.slice(1), "utf8")) as RoundsJob) : run(JSON.parse(argument) as NodeLoadJob)).then(
  (result) => process.stdout.write(`${JSON.stringify(result)}\n`),
  (err) => {
    process.stderr.write(`load generator: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  },
);
