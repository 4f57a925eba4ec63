// What every bench scenario shares: the servers it starts, the frames it sends,
// how a load is run and measured against the no-op baseline of the same run,
// and how its answers are checked (a wrong answer fails the row, an error aborts it).
import { create, toBinary } from "@bufbuild/protobuf";
import { type Client, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { ApiKeyService, Role, VerifyCode, VerifyKeyRequestSchema, type VerifyKeyResponse } from "../../gen/apikeys/v1/apikeys_pb.js";
import { type ServerChild, startServer } from "../children.js";
import { DATASET_SCOPES } from "../dataset.js";
import { type LoadResult, type LoadSpec, type Tool, grpcFrame, runLoad } from "../load.js";
import type { Row } from "../report.js";
import type { Usage } from "../server.js";

/** The pepper of every bench server; the datasets' hashes are made with it. */
export const PEPPER = "apikeys-bench-pepper-not-a-secret";

/** The one caller of every bench server: authenticated, like production. */
export const TOKEN = "apikeys-bench-caller-token-7Hq2Lm9Zx";

export const VERIFY_PATH = "/apikeys.v1.ApiKeyService/VerifyKey";

/** The shape of every throughput run: enough requests in flight to keep a server busy. */
const CONNECTIONS = 4;
const IN_FLIGHT = 64;

/** Writers in flight for CreateKey and its raw-INSERT yardstick (the service's MySQL pool holds 10). */
export const CREATE_CONCURRENCY = 8;

/** How far an answer's size may stray from the expected one (credits left and the like vary). */
const BYTES_TOLERANCE = 0.1;

export const OWNER = { userId: "user_bench", role: Role.OWNER };

const BENCH_ORG = "org_bench";

export interface Settings {
  durationS: number;
  warmupS: number;
  /** Dataset sizes for cold lookups, smallest first. */
  coldSizes: number[];
  /** Distinct keys a cold run cycles through (fewer when the dataset is smaller). */
  coldSample: number;
  /** Keys cached in the memory scenario. */
  memoryKeys: number;
  /** Revocations measured, and revocations before them to warm up with (unmeasured). */
  revocations: number;
  revokeWarmup: number;
  /** Seconds under load, unmeasured, before an in-memory scenario's runs (see measureInMemory); 0: none. */
  soakS: number;
  /** Rows 6b–6d (revoke-topologies.ts): they start up to 10 instances and a Redis Cluster, minutes on 2 cores. */
  revokeTopologies: boolean;
}

export interface Bench {
  settings: Settings;
  /** h2load, or the Node load generator where h2load is not available. */
  tool: Tool;
  mysqlServerUrl: string;
  redisUrl: string;
  /** A database of this run's own, for keys created through the API. */
  scratchUrl: string;
  /** Max-load results of the no-op baseline, by tool. */
  baseline: Partial<Record<Tool, LoadResult>>;
  /** The no-op baseline server, kept running so in-memory scenarios can be paired with it (see pairedRatio). */
  baselineChild?: ServerChild;
  log(line: string): void;
  row(row: Row): void;
}

/** The service most scenarios load: the scratch database, a cache, two keys. */
export interface MainService {
  child: ServerChild;
  client: Client<typeof ApiKeyService>;
  /** A key without limits (answered from the cache) and one with huge limits (so it stays valid). */
  keys: { plain: string; limited: string };
}

export function serviceEnv(b: Bench, mysqlUrl: string, extra: Record<string, string> = {}): Record<string, string> {
  return {
    KEY_PEPPER: PEPPER,
    CALLERS: JSON.stringify([{ name: "bench", token: TOKEN, allow: ["manage", "verify"] }]),
    HOST: "127.0.0.1",
    GRPC_PORT: "0",
    HTTP_PORT: "0",
    MYSQL_URL: mysqlUrl,
    REDIS_URL: b.redisUrl,
    LOG_LEVEL: "warn",
    ...extra,
  };
}

export function client(child: ServerChild): Client<typeof ApiKeyService> {
  const transport = createGrpcTransport({
    baseUrl: `http://${child.target}`,
    interceptors: [
      (next) => (req) => {
        req.header.set("authorization", `Bearer ${TOKEN}`);
        return next(req);
      },
    ],
  });
  return createClient(ApiKeyService, transport);
}

export function verifyFrame(key: string, cost = 0): Buffer {
  return grpcFrame(toBinary(VerifyKeyRequestSchema, create(VerifyKeyRequestSchema, { key, requiredScopes: DATASET_SCOPES, cost })));
}

export async function expectVerify(c: Client<typeof ApiKeyService>, key: string, code: VerifyCode, cost = 0): Promise<VerifyKeyResponse> {
  const res = await c.verifyKey({ key, requiredScopes: DATASET_SCOPES, cost });
  if (res.code !== code) throw new Error(`VerifyKey answered ${VerifyCode[res.code]}, expected ${VerifyCode[code]}`);
  return res;
}

export function spec(b: Bench, target: string, path: string, frames: Buffer[], extra: Partial<LoadSpec> = {}): LoadSpec {
  const { durationS, warmupS } = b.settings;
  return { target, path, token: TOKEN, frames, connections: CONNECTIONS, inFlight: IN_FLIGHT, durationS, warmupS, rate: 0, ...extra };
}

/**
 * Max throughput, then latency at half of it (a server at its limit only measures its queue). The half-load
 * run is a closed loop with the fewest requests in flight (1, 2, 4, …) whose throughput reaches half the max,
 * not a rate: h2load's --rps sends each client's due requests in bursts when its timer fires (millisecond
 * ticks), and its latencies then hold the queue that burst makes — measured here, p50 0.7–1.2 ms at 2,000
 * req/s (6% of the max), against 0.1 ms in a closed loop at 9,000 req/s.
 */
export async function maxAndHalf(tool: Tool, s: LoadSpec): Promise<{ max: LoadResult; half: HalfLoad }> {
  const max = await runLoad(tool, s);
  const inFlight = await halfLoadInFlight(tool, s, max.rps);
  return { max, half: { ...(await runLoad(tool, { ...s, inFlight })), inFlight } };
}

/** A run at half load or a little more, and the requests it kept in flight. */
type HalfLoad = LoadResult & { inFlight: number };

/** The fewest requests in flight (1, 2, 4, … up to the spec's) whose closed loop reaches half of `maxRps`. */
export async function halfLoadInFlight(tool: Tool, s: LoadSpec, maxRps: number): Promise<number> {
  let inFlight = 1;
  while (inFlight < s.inFlight) {
    const probe = await runLoad(tool, { ...s, inFlight, durationS: Math.min(2, s.durationS), warmupS: 0 });
    if (probe.rps >= maxRps / 2) break;
    inFlight *= 2;
  }
  return Math.min(inFlight, s.inFlight);
}

/** Why the answers of a load run cannot be trusted, or null. */
export function wrongAnswers(results: LoadResult[], expectedBytes: number | null): string | null {
  for (const r of results) {
    if (r.requests === 0) return "no request completed";
    if (r.failed > 0) return `${r.failed} of ${r.requests} answers wrong: ${JSON.stringify(r.failures)}`;
    if (expectedBytes === null) continue;
    // h2load's figure may include answers cut off at the end of the run: the true size is in [low, high].
    const low = r.bytesPerResponseLow ?? r.bytesPerResponse;
    const high = r.bytesPerResponse;
    if (expectedBytes < low - expectedBytes * BYTES_TOLERANCE || expectedBytes > high + expectedBytes * BYTES_TOLERANCE) {
      const averaged = low < high - 0.5 ? `${low.toFixed(0)}–${high.toFixed(0)}` : high.toFixed(0);
      return `answers averaged ${averaged} bytes, expected ${expectedBytes}`;
    }
  }
  return null;
}

export function ratioTo(b: Bench, tool: Tool, result: LoadResult): number {
  return result.rps / b.baseline[tool]!.rps;
}

/** An in-memory scenario's figures (see measureInMemory). */
interface InMemory {
  max: LoadResult;
  half: HalfLoad;
  ratio: number;
  /** Each pair's ratio (scenario run / the baseline run after it): how far the runs agree. */
  pairs: number[];
  /** CPU time per call over the measured runs (µs): the service's and the baseline's, less noisy than req/s. */
  cpuPerCall: { service: number; baseline: number };
  /** The soak: the service's first run after it idled, and the baseline's run just before it; null without one. */
  soak: { service: LoadResult; baseline: LoadResult } | null;
}

/**
 * Max, half-load latency and the paired ratio of a scenario on the main service, in steady state. The main
 * service idles while other rows run (a minute or more), and a Node process that idled that long is slower
 * for its next minute of load: V8's memory reducer collects when a process goes quiet, the optimized code of
 * the earlier load is thrown away with what it referenced ("weak objects" deoptimizations), and it is rebuilt
 * from new feedback over the next tens of thousands of calls. Measured: cached runs 17.7k → 19.7k req/s over
 * eight 12 s runs after a 30 s pause, against 19.6k for the baseline; loaded from its start, never paused,
 * the service held 0.93–0.99× in paired runs. The no-op baseline shows no such dip. So both servers first
 * run `soakS` seconds of this load, unmeasured (the baseline first, so that the service does not idle again
 * before its runs); the service's soak is reported with the row, as what the first seconds after a pause give.
 */
export async function measureInMemory(b: Bench, service: ServerChild, load: LoadSpec): Promise<InMemory> {
  let soak: InMemory["soak"] = null;
  if (b.settings.soakS > 0) {
    const run = (target: string) => runLoad(b.tool, { ...load, target, durationS: b.settings.soakS, warmupS: 0 });
    const baseline = await run(b.baselineChild!.target);
    soak = { baseline, service: await run(load.target) };
  }
  const { max, half } = await maxAndHalf(b.tool, load);
  return { max, half, ...(await pairedRatio(b, service, load, max)), soak };
}

/** How the row's ratio was measured: its pairs, and the soak before them. */
export function pairingNote(b: Bench, m: InMemory): string {
  const pairs = `; the ratio's pairs of runs: ${m.pairs.map((r) => `${r.toFixed(2)}×`).join(", ")}; ${cpuNote(m.cpuPerCall)}`;
  if (m.soak === null) return pairs;
  const { service, baseline } = m.soak;
  return `${pairs}; measured after ${b.settings.soakS} s of this load (during them, just after the service idled: ${(service.rps / baseline.rps).toFixed(2)}×)`;
}

/** CPU time per call of the service and the baseline at the same load: the ratio of work done, which steal and drift move less than req/s. */
export function cpuNote(cpu: InMemory["cpuPerCall"]): string {
  return `CPU per call: the service ${cpu.service.toFixed(1)} µs, the baseline ${cpu.baseline.toFixed(1)} µs (${(cpu.baseline / cpu.service).toFixed(2)}×)`;
}

/**
 * The ratio of an in-memory scenario to the baseline, measured paired: after
 * the scenario's max run (B1), the baseline (A1), the scenario again (B2) and
 * the baseline again (A2), each with the same requests; (B1 + B2) / (A1 + A2).
 * A shared VM's speed drifts over minutes, so a baseline measured once at the
 * start made ratios swing by ±0.2 between runs; interleaving cancels drift.
 * Each pair's own ratio (B1/A1, B2/A2) is kept too: the row shows how far they agree.
 */
async function pairedRatio(
  b: Bench,
  service: ServerChild,
  scenario: LoadSpec,
  first: LoadResult,
): Promise<Pick<InMemory, "ratio" | "pairs" | "cpuPerCall">> {
  const runs = await inTurns(b.tool, { load: scenario, server: service }, { load: { ...scenario, target: b.baselineChild!.target }, server: b.baselineChild! }, first);
  return {
    ratio: sumRps(runs.scenario) / sumRps(runs.baseline),
    pairs: runs.scenario.map((run, i) => run.rps / runs.baseline[i].rps),
    cpuPerCall: runs.cpuPerCall,
  };
}

/** A load and the server it goes to. */
interface Target {
  load: LoadSpec;
  server: ServerChild;
}

/**
 * Scenario and baseline runs in turns (scenario, baseline, scenario, baseline); `first` is a scenario run
 * already made. Also each server's CPU time per call over the runs made here, all at the same load.
 */
export async function inTurns(
  tool: Tool,
  scenario: Target,
  baseline: Target,
  first?: LoadResult,
): Promise<{ scenario: LoadResult[]; baseline: LoadResult[]; cpuPerCall: { service: number; baseline: number } }> {
  const used = { service: { cpuMicros: 0, calls: 0 }, baseline: { cpuMicros: 0, calls: 0 } };
  const run = async (target: Target, into: Usage): Promise<LoadResult> => {
    const before = await target.server.usage();
    const result = await runLoad(tool, target.load);
    const after = await target.server.usage();
    into.cpuMicros += after.cpuMicros - before.cpuMicros;
    into.calls += after.calls - before.calls;
    return result;
  };
  const s1 = first ?? (await run(scenario, used.service));
  const b1 = await run(baseline, used.baseline);
  const s2 = await run(scenario, used.service);
  const b2 = await run(baseline, used.baseline);
  const perCall = (u: Usage) => u.cpuMicros / Math.max(1, u.calls);
  return { scenario: [s1, s2], baseline: [b1, b2], cpuPerCall: { service: perCall(used.service), baseline: perCall(used.baseline) } };
}

export function sumRps(runs: { rps: number }[]): number {
  return runs.reduce((sum, r) => sum + r.rps, 0);
}

export function halfNote(half: HalfLoad): string {
  return `p50/p99 at ${Math.round(half.rps)} req/s (≥ ½ load; ${half.inFlight} in flight)`;
}

export async function startMainService(b: Bench): Promise<MainService> {
  const child = await startServer("service", { env: serviceEnv(b, b.scratchUrl) });
  const c = client(child);
  const base = { organizationId: BENCH_ORG, actor: OWNER, scopes: DATASET_SCOPES };
  const plain = await c.createKey({ ...base, name: "bench: cached" });
  const limited = await c.createKey({
    ...base,
    name: "bench: limits",
    limits: { requestsPerMinute: 4_000_000_000, requestsPerDay: 4_000_000_000, monthlyCredits: BigInt(Number.MAX_SAFE_INTEGER) },
  });
  return { child, client: c, keys: { plain: plain.secret, limited: limited.secret } };
}

export function mb(bytes: number): string {
  return (bytes / 2 ** 20).toFixed(0);
}
