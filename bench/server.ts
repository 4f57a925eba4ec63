// The server under test, run by bench/run.ts as a child process so that the
// load generator never shares its event loop. Configured from the environment
// exactly like `npm start`, with one argument:
//   service   the real service (buildApp), its store wrapped to count and time calls
//   baseline  a no-op VerifyKey on the same grpc-js stack (createGrpcServer,
//             addBinding, the same caller auth and options): the ceiling every
//             scenario is measured against
// Talks JSON lines: prints {"grpcPort",…} once listening, then answers each
// "stats" line on stdin with a stats line; "stop" or the end of stdin stops it
// gracefully (so that `node --cpu-prof` writes its profile).
import cluster from "node:cluster";
import { createInterface } from "node:readline";
import { fromBinary } from "@bufbuild/protobuf";
import { ApiKeyService, VerifyKeyResponseSchema } from "../gen/apikeys/v1/apikeys_pb.js";
import { buildApp, openStore } from "../src/app.js";
import { loadConfig } from "../src/config.js";
import { ApiError, Status } from "../src/keys/errors.js";
import { LAST_USED_CHUNK } from "../src/store/mysql-store.js";
import type { Store } from "../src/keys/ports.js";
import { CallerAuth } from "../src/transport/auth.js";
import type { ServiceBinding } from "../src/transport/bindings.js";
import { addBinding, createGrpcServer, listenGrpc } from "../src/transport/grpc-server.js";
import { type Pause, recordGcPauses } from "./pauses.js";
import { Samples } from "./stats.js";

/** What the parent reads through the "stats" command (see bench/children.ts). */
export interface ServerStats {
  rss: number;
  heapUsed: number;
  /** The same after a full garbage collection: what the process holds on to, garbage aside. */
  rssAfterGc: number;
  heapAfterGc: number;
  /** After the full GC too: the V8 heap's reserved size, and memory outside it (Buffers and other ArrayBuffers, mostly). */
  heapTotalAfterGc: number;
  externalAfterGc: number;
  arrayBuffersAfterGc: number;
  /** Verifications answered, by VerifyCode number. */
  verified: number[];
  /** CPU time the process used so far (user + system), µs. */
  cpuMicros: number;
  /** With BENCH_WORKERS > 1 (the figures above are their sums): each server process's own. */
  perProcess?: { verified: number; cpuMicros: number; rss: number }[];
  cacheSize: number;
  /** Store calls by method name, e.g. findByHash, touchLastUsed. */
  storeCalls: Record<string, number>;
  /** Store call latency by method name, over the calls since the previous stats or latencies command (ms). */
  storeLatency: Record<string, { p50: number; p99: number }>;
  /** Latency of announcing changes to the other instances, to the last ack, over the same calls (ms). */
  broadcastLatency?: { p50: number; p99: number };
  /** Subscribers the last invalidation reached, the publisher included (Redis's count). */
  broadcastReceivers?: number;
}

/** What the "latencies" command answers: the store's and the broadcast's, drained like stats() drains them. */
export type Latencies = Pick<ServerStats, "storeLatency" | "broadcastLatency">;

interface Running {
  grpcPort: number;
  httpPort: number;
  stats(): ServerStats;
  /**
   * The latencies alone, drained, without the full GC stats() does: right before a measured run. A forced
   * full GC there deoptimized about 150 functions in each revoke instance ("weak objects": what the previous
   * client's connection left behind), which V8 then compiled again during the measured revocations.
   */
  latencies(): Latencies;
  /** Keys evicted by invalidations since the last call, each with when (process.hrtime, ns, as text). */
  evictions(): Record<string, string>;
  /** GC pauses since the last call (service mode; the baseline's are not asked for). */
  pauses(): Pause[];
  /** Verifications answered so far, read without the GC stats() does. */
  calls(): number;
  stop(): Promise<void>;
}

/** What the "usage" command answers: CPU time and calls so far, read without collecting garbage. */
export interface Usage {
  cpuMicros: number;
  calls: number;
}

/**
 * The store with every call counted and timed, without touching src/: shows
 * which scenarios reach the database, and how much of a cold lookup's time is
 * the database's.
 */
function instrumentedStore(store: Store, calls: Record<string, number>, latencies: Map<string, Samples>): Store {
  return new Proxy(store, {
    get(target, prop, receiver) {
      const value = Reflect.get(target, prop, receiver);
      if (typeof value !== "function" || typeof prop !== "string") return value;
      return (...args: unknown[]) => {
        calls[prop] = (calls[prop] ?? 0) + 1;
        // What MariaDB sees: one round trip per LAST_USED_CHUNK keys of a flush (UPDATEs of one
        // organization each, those of small organizations sent together).
        if (prop === "touchLastUsed") {
          let keys = 0;
          for (const times of (args[0] as ReadonlyMap<string, ReadonlyMap<string, number>>).values()) keys += times.size;
          calls.lastUsedUpdates = (calls.lastUsedUpdates ?? 0) + Math.ceil(keys / LAST_USED_CHUNK);
        }
        const started = performance.now();
        const result = value.apply(target, args);
        if (!(result instanceof Promise)) return result;
        let samples = latencies.get(prop);
        if (samples === undefined) latencies.set(prop, (samples = new Samples()));
        return timed(started, result, samples);
      };
    },
  });
}

/** The promise, its time to settle since `started` added to `samples`. */
function timed<T>(started: number, work: Promise<T>, samples: Samples): Promise<T> {
  return work.finally(() => samples.add(performance.now() - started));
}

function percentiles(samples: Samples): { p50: number; p99: number } {
  return { p50: samples.percentile(50), p99: samples.percentile(99) };
}

/** Percentiles of the samples, which start again from nothing. */
function drain(latencies: Map<string, Samples>): ServerStats["storeLatency"] {
  const out: ServerStats["storeLatency"] = {};
  for (const [method, samples] of latencies) out[method] = percentiles(samples);
  latencies.clear();
  return out;
}

function cpuMicros(): number {
  const used = process.cpuUsage();
  return used.user + used.system;
}

/** Memory as the OS sees it, then after a full GC (the bench starts servers with --expose-gc). */
type MemoryStats = Pick<ServerStats, "rss" | "heapUsed" | "rssAfterGc" | "heapAfterGc" | "heapTotalAfterGc" | "externalAfterGc" | "arrayBuffersAfterGc">;

function memory(): MemoryStats {
  const before = process.memoryUsage();
  (globalThis as { gc?: () => void }).gc?.();
  const after = process.memoryUsage();
  return {
    rss: before.rss,
    heapUsed: before.heapUsed,
    rssAfterGc: after.rss,
    heapAfterGc: after.heapUsed,
    heapTotalAfterGc: after.heapTotal,
    externalAfterGc: after.external,
    arrayBuffersAfterGc: after.arrayBuffers,
  };
}

async function startService(): Promise<Running> {
  const config = loadConfig(process.env, { dev: false });
  const storeCalls: Record<string, number> = {};
  const storeLatencies = new Map<string, Samples>();
  const app = await buildApp(config, { store: instrumentedStore(await openStore(config), storeCalls, storeLatencies) });
  // The broadcast timed too: with the store's share, what a revocation's latency is made of.
  let broadcastSamples = new Samples();
  const broadcast = app.broadcast;
  if (broadcast) {
    const invalidate = broadcast.invalidate.bind(broadcast);
    broadcast.invalidate = (event) => timed(performance.now(), invalidate(event), broadcastSamples);
  }
  // When each key was evicted (the moment this instance stops answering from its cached state), on a clock
  // every process shares (CLOCK_MONOTONIC): how long a revocation takes to reach the other instances.
  let evicted = new Map<string, bigint>();
  const cache = app.cache;
  if (cache) {
    const apply = cache.apply.bind(cache);
    cache.apply = (event) => {
      apply(event);
      if (event.kind !== "keys") return;
      const at = process.hrtime.bigint();
      for (const id of event.keyIds) if (!evicted.has(id)) evicted.set(id, at);
    };
  }
  const latencies = (): Latencies => {
    const broadcastLatency = broadcastSamples.size > 0 ? percentiles(broadcastSamples) : undefined;
    broadcastSamples = new Samples();
    return { storeLatency: drain(storeLatencies), broadcastLatency };
  };
  const pauses = recordGcPauses();
  const { grpcPort, httpPort } = await app.start();
  return {
    grpcPort,
    httpPort,
    pauses,
    evictions: () => {
      const out = Object.fromEntries([...evicted].map(([id, at]) => [id, String(at)]));
      evicted = new Map();
      return out;
    },
    stats: () => ({
      ...memory(),
      verified: Array.from(app.verifier.stats.byCode),
      cacheSize: app.cache?.size ?? 0,
      cpuMicros: cpuMicros(),
      storeCalls,
      ...latencies(),
      broadcastReceivers: broadcast?.stats.lastReceivers,
    }),
    latencies,
    calls: () => app.verifier.stats.byCode.reduce((sum, n) => sum + n, 0),
    stop: () => app.stop(),
  };
}

async function startBaseline(): Promise<Running> {
  const config = loadConfig(process.env, { dev: false });
  const encoded = process.env.BENCH_BASELINE_RESPONSE ?? "";
  if (encoded === "") throw new Error("BENCH_BASELINE_RESPONSE (base64 VerifyKeyResponse) is required in baseline mode");
  // The service's answer for the scenario's key, so both send the same bytes;
  // frozen like the service's cached answers, so the stack encodes it once.
  const answer = Object.freeze(fromBinary(VerifyKeyResponseSchema, Buffer.from(encoded, "base64")));
  const unimplemented = () => {
    throw new ApiError(Status.UNIMPLEMENTED, "UNIMPLEMENTED", "the baseline server only answers VerifyKey");
  };
  const handlers: Record<string, () => unknown> = Object.fromEntries(ApiKeyService.methods.map((m) => [m.localName, unimplemented]));
  handlers.verifyKey = () => answer;
  const binding = {
    service: ApiKeyService,
    handlers,
    access: (method: string) => (method === "verifyKey" ? "verify" : "manage"),
  } as unknown as ServiceBinding;
  const server = createGrpcServer({ maxMessageBytes: config.maxMessageBytes });
  const verified = new Array<number>(16).fill(0);
  addBinding(server, binding, new CallerAuth(config.callers, config.allowUnauthenticated), () => {}, {
    finished: () => {
      verified[answer.code]++;
    },
  });
  const grpcPort = await listenGrpc(server, config.host, config.grpcPort);
  return {
    grpcPort,
    httpPort: 0,
    stats: () => ({ ...memory(), verified, cacheSize: 0, cpuMicros: cpuMicros(), storeCalls: {}, storeLatency: {} }),
    latencies: () => ({ storeLatency: {} }),
    calls: () => verified.reduce((sum, n) => sum + n, 0),
    evictions: () => ({}),
    pauses: () => [],
    stop: () => new Promise((resolve) => server.tryShutdown(() => resolve())),
  };
}

async function main(): Promise<void> {
  const mode = process.argv[2];
  if (mode !== "service" && mode !== "baseline") throw new Error("usage: server.ts service|baseline");
  // Tagged, because the service's own log lines share stdout.
  const say = (message: object) => process.stdout.write(`${JSON.stringify({ bench: true, ...message })}\n`);
  const workers = Number(process.env.BENCH_WORKERS ?? "1");
  if (workers > 1 && cluster.isPrimary) return supervise(workers, say);
  const running = mode === "service" ? await startService() : await startBaseline();
  if (cluster.isWorker) return serveSupervisor(running);
  say({ grpcPort: running.grpcPort, httpPort: running.httpPort });
  let stopping: Promise<void> | null = null;
  const stop = () => {
    stopping ??= running.stop().then(() => process.exit(0));
  };
  const lines = createInterface({ input: process.stdin });
  lines.on("line", (line) => {
    if (line === "stop") stop();
    else if (isCommand(line)) {
      const spec = COMMANDS[line] as CommandSpec<unknown>;
      say(spec.reply(spec.answer(running)));
    }
  });
  lines.on("close", stop);
}

/**
 * The commands the parent sends on stdin (see bench/children.ts), besides
 * "stop": what one server process answers, how the answers of several
 * (BENCH_WORKERS) make one, and the line the parent reads.
 */
const COMMANDS = {
  stats: command((running) => running.stats(), sumStats, (stats) => stats),
  // The first worker's, as in stats: percentiles do not add up.
  latencies: command((running) => running.latencies(), (all) => all[0], (latencies) => latencies),
  rss: command(() => process.memoryUsage.rss(), (all) => sum(all, (rss) => rss), (rss) => ({ rss })),
  usage: command(usage, (all): Usage => ({ cpuMicros: sum(all, (u) => u.cpuMicros), calls: sum(all, (u) => u.calls) }), (u) => u),
  evictions: command((running) => running.evictions(), (all) => Object.assign({}, ...all) as Record<string, string>, (evictions) => ({ evictions })),
  pauses: command((running) => running.pauses(), (all) => all.flat(), (pauses) => ({ pauses })),
};
type Command = keyof typeof COMMANDS;

interface CommandSpec<T> {
  answer(running: Running): T;
  combine(all: T[]): T;
  reply(answer: T): object;
}

function command<T>(answer: (running: Running) => T, combine: (all: T[]) => T, reply: (answer: T) => object): CommandSpec<T> {
  return { answer, combine, reply };
}

function isCommand(line: string): line is Command {
  return Object.hasOwn(COMMANDS, line);
}

/**
 * BENCH_WORKERS > 1: this process forks that many servers sharing the port (node:cluster, as the service's
 * WORKERS does) and speaks the bench's protocol for all of them: stats summed, with each one's in perProcess.
 */
function supervise(count: number, say: (message: object) => void): void {
  const workers = Array.from({ length: count }, () => cluster.fork());
  let listening = 0;
  // Each worker answers requests in order: its replies resolve these, first come first served.
  const replies: ((answer: unknown) => void)[][] = workers.map(() => []);
  workers.forEach((worker, i) => {
    worker.on("message", (message: { type: string; grpcPort?: number; httpPort?: number; answer?: unknown }) => {
      if (message.type === "listening" && ++listening === count) say({ grpcPort: message.grpcPort, httpPort: message.httpPort });
      else if (message.type === "answer") replies[i].shift()?.(message.answer);
    });
    worker.on("exit", (code) => {
      if (code !== 0) process.exit(1);
    });
  });
  const ask = (type: Command) =>
    Promise.all(
      workers.map(
        (worker, i) =>
          new Promise<unknown>((resolve) => {
            replies[i].push(resolve);
            worker.send({ type });
          }),
      ),
    );
  const stop = () => {
    let left = count;
    for (const worker of workers) {
      worker.once("exit", () => --left === 0 && process.exit(0));
      worker.send({ type: "stop" });
    }
  };
  const lines = createInterface({ input: process.stdin });
  lines.on("line", (line) => {
    if (line === "stop") stop();
    else if (isCommand(line)) {
      const spec = COMMANDS[line] as CommandSpec<unknown>;
      ask(line).then((all) => say(spec.reply(spec.combine(all))));
    }
  });
  lines.on("close", stop);
}

function serveSupervisor(running: Running): void {
  process.send!({ type: "listening", grpcPort: running.grpcPort, httpPort: running.httpPort });
  process.on("message", (message: { type: string }) => {
    if (message.type === "stop") running.stop().then(() => process.exit(0));
    else if (isCommand(message.type)) process.send!({ type: "answer", answer: COMMANDS[message.type].answer(running) });
  });
}

function usage(running: Running): Usage {
  return { cpuMicros: cpuMicros(), calls: running.calls() };
}

function sum<T>(items: T[], pick: (item: T) => number): number {
  return items.reduce((total, item) => total + pick(item), 0);
}

function sumStats(all: ServerStats[]): ServerStats {
  const total = (pick: (st: ServerStats) => number) => sum(all, pick);
  const storeCalls: Record<string, number> = {};
  for (const st of all) for (const [name, n] of Object.entries(st.storeCalls)) storeCalls[name] = (storeCalls[name] ?? 0) + n;
  return {
    ...all[0],
    rss: total((st) => st.rss),
    heapUsed: total((st) => st.heapUsed),
    rssAfterGc: total((st) => st.rssAfterGc),
    heapAfterGc: total((st) => st.heapAfterGc),
    heapTotalAfterGc: total((st) => st.heapTotalAfterGc),
    externalAfterGc: total((st) => st.externalAfterGc),
    arrayBuffersAfterGc: total((st) => st.arrayBuffersAfterGc),
    verified: all[0].verified.map((_, code) => total((st) => st.verified[code] ?? 0)),
    cpuMicros: total((st) => st.cpuMicros),
    cacheSize: total((st) => st.cacheSize),
    storeCalls,
    perProcess: all.map((st) => ({ verified: st.verified.reduce((a, n) => a + n, 0), cpuMicros: st.cpuMicros, rss: st.rss })),
  };
}

main().catch((err) => {
  process.stderr.write(`bench server: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
