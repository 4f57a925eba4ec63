// The scenarios of issue 8, each measured against the no-op baseline of the
// same run. Every scenario checks its answers with a real client before and
// after the load (and the load tools check what they can), so a broken server
// cannot look fast: a wrong answer fails the row, an error aborts it.
import { copyFile, mkdtemp, readFile, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { create, toBinary } from "@bufbuild/protobuf";
import { type Client, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import mysql from "mysql2/promise";
import type { RowDataPacket } from "mysql2/promise";
import {
  ApiKeyService,
  CreateKeyRequestSchema,
  CreateKeyResponseSchema,
  RevokeKeyRequestSchema,
  Role,
  VerifyCode,
  VerifyKeyRequestSchema,
  type VerifyKeyResponse,
  VerifyKeyResponseSchema,
} from "../gen/apikeys/v1/apikeys_pb.js";
import { generateSecret } from "../src/keys/key-format.js";
import { TestRedis } from "../test/helpers/redis.js";
import { type ServerChild, startServer } from "./children.js";
import type { Usage } from "./server.js";
import { DATASET_SCOPES, ensureBufferPool, openDataset, sizeLabel } from "./dataset.js";
import { type LoadResult, type LoadSpec, type RoundsResult, type Tool, grpcFrame, runLoad, runRounds } from "./load.js";
import { slowestDuringPauses } from "./pauses.js";
import { topSelfTime } from "./profile.js";
import { type RawResult, rawInserts, rawRevokes } from "./raw-insert.js";
import type { Row } from "./report.js";
import { Samples } from "./stats.js";

/** The pepper of every bench server; the datasets' hashes are made with it. */
const PEPPER = "apikeys-bench-pepper-not-a-secret";
/** The one caller of every bench server: authenticated, like production. */
const TOKEN = "apikeys-bench-caller-token-7Hq2Lm9Zx";
const VERIFY_PATH = "/apikeys.v1.ApiKeyService/VerifyKey";
const CREATE_PATH = "/apikeys.v1.ApiKeyService/CreateKey";
const REVOKE_PATH = "/apikeys.v1.ApiKeyService/RevokeKey";
/** The shape of every throughput run: enough requests in flight to keep a server busy. */
const CONNECTIONS = 4;
const IN_FLIGHT = 64;
/** Writers in flight for CreateKey and its raw-INSERT yardstick (the service's MySQL pool holds 10). */
const CREATE_CONCURRENCY = 8;
const CREATORS = 256;
/** How far an answer's size may stray from the expected one (credits left and the like vary). */
const BYTES_TOLERANCE = 0.1;
const OWNER = { userId: "user_bench", role: Role.OWNER };
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

function serviceEnv(b: Bench, mysqlUrl: string, extra: Record<string, string> = {}): Record<string, string> {
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

function client(child: ServerChild): Client<typeof ApiKeyService> {
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

function verifyFrame(key: string, cost = 0): Buffer {
  return grpcFrame(toBinary(VerifyKeyRequestSchema, create(VerifyKeyRequestSchema, { key, requiredScopes: DATASET_SCOPES, cost })));
}

function revokeFrame(organizationId: string, keyId: string): Buffer {
  return grpcFrame(toBinary(RevokeKeyRequestSchema, create(RevokeKeyRequestSchema, { organizationId, keyId, actor: OWNER, reason: "bench" })));
}

/** A round whose timed call failed aborts the row: its latency would not be that of the call measured. */
function failedRounds(result: RoundsResult, what: string): void {
  const failed = Object.entries(result.failures).map(([why, count]) => `${count} × ${why}`);
  if (failed.length > 0) throw new Error(`${what} failed: ${failed.join(", ")}`);
}

function samplesOf(values: number[]): Samples {
  const samples = new Samples();
  for (const v of values) samples.add(v);
  return samples;
}

async function expectVerify(c: Client<typeof ApiKeyService>, key: string, code: VerifyCode, cost = 0): Promise<VerifyKeyResponse> {
  const res = await c.verifyKey({ key, requiredScopes: DATASET_SCOPES, cost });
  if (res.code !== code) throw new Error(`VerifyKey answered ${VerifyCode[res.code]}, expected ${VerifyCode[code]}`);
  return res;
}

function spec(b: Bench, target: string, path: string, frames: Buffer[], extra: Partial<LoadSpec> = {}): LoadSpec {
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
async function maxAndHalf(tool: Tool, s: LoadSpec): Promise<{ max: LoadResult; half: HalfLoad }> {
  const max = await runLoad(tool, s);
  const inFlight = await halfLoadInFlight(tool, s, max.rps);
  return { max, half: { ...(await runLoad(tool, { ...s, inFlight })), inFlight } };
}

/** A run at half load or a little more, and the requests it kept in flight. */
type HalfLoad = LoadResult & { inFlight: number };

/** The fewest requests in flight (1, 2, 4, … up to the spec's) whose closed loop reaches half of `maxRps`. */
async function halfLoadInFlight(tool: Tool, s: LoadSpec, maxRps: number): Promise<number> {
  let inFlight = 1;
  while (inFlight < s.inFlight) {
    const probe = await runLoad(tool, { ...s, inFlight, durationS: Math.min(2, s.durationS), warmupS: 0 });
    if (probe.rps >= maxRps / 2) break;
    inFlight *= 2;
  }
  return Math.min(inFlight, s.inFlight);
}

/** Why the answers of a load run cannot be trusted, or null. */
function wrongAnswers(results: LoadResult[], expectedBytes: number | null): string | null {
  for (const r of results) {
    if (r.requests === 0) return "no request completed";
    if (r.failed > 0) return `${r.failed} of ${r.requests} answers wrong: ${JSON.stringify(r.failures)}`;
    if (expectedBytes !== null && Math.abs(r.bytesPerResponse - expectedBytes) > expectedBytes * BYTES_TOLERANCE) {
      return `answers averaged ${r.bytesPerResponse.toFixed(0)} bytes, expected ${expectedBytes}`;
    }
  }
  return null;
}

function ratioTo(b: Bench, tool: Tool, result: LoadResult): number {
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
async function measureInMemory(b: Bench, service: ServerChild, load: LoadSpec): Promise<InMemory> {
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
function pairingNote(b: Bench, m: InMemory): string {
  const pairs = `; the ratio's pairs of runs: ${m.pairs.map((r) => `${r.toFixed(2)}×`).join(", ")}; ${cpuNote(m.cpuPerCall)}`;
  if (m.soak === null) return pairs;
  const { service, baseline } = m.soak;
  return `${pairs}; measured after ${b.settings.soakS} s of this load (during them, just after the service idled: ${(service.rps / baseline.rps).toFixed(2)}×)`;
}

/** CPU time per call of the service and the baseline at the same load: the ratio of work done, which steal and drift move less than req/s. */
function cpuNote(cpu: InMemory["cpuPerCall"]): string {
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
async function inTurns(
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

function sumRps(runs: { rps: number }[]): number {
  return runs.reduce((sum, r) => sum + r.rps, 0);
}

function halfNote(half: HalfLoad): string {
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

/**
 * The no-op baseline: the same grpc-js stack, caller auth and port setup,
 * answering the bytes the service answers for the cached key. Measured with
 * every tool the run uses (the Node load generator always: it shows its
 * headroom over the cold scenarios it drives).
 */
export async function baseline(b: Bench, main: MainService): Promise<void> {
  const answer = await expectVerify(main.client, main.keys.plain, VerifyCode.VALID);
  const encoded = toBinary(VerifyKeyResponseSchema, answer);
  const child = await startServer("baseline", {
    env: serviceEnv(b, "mysql://unused/unused", { BENCH_BASELINE_RESPONSE: Buffer.from(encoded).toString("base64") }),
  });
  b.baselineChild = child;
  try {
    const c = client(child);
    await expectVerify(c, main.keys.plain, VerifyCode.VALID);
    for (const tool of new Set<Tool>([b.tool, "node"])) {
      const { max, half } = await maxAndHalf(tool, spec(b, child.target, VERIFY_PATH, [verifyFrame(main.keys.plain)]));
      const wrong = wrongAnswers([max, half], encoded.length);
      if (wrong) throw new Error(`the baseline's answers are wrong: ${wrong}`);
      b.baseline[tool] = max;
      b.row({
        scenario: `no-op baseline (${tool === "node" ? "Node load generator" : "h2load"})`,
        rps: max.rps,
        ratio: 1,
        p50Ms: half.p50Ms,
        p99Ms: half.p99Ms,
        target: "—",
        verdict: "info",
        notes: `${halfNote(half)}; ${encoded.length}-byte answers; RSS ${mb((await child.stats()).rss)} MB`,
      });
    }
  } catch (err) {
    b.baselineChild = undefined;
    await child.stop();
    throw err;
  }
}

/** 1. A valid key answered from the cache. */
export async function cached(b: Bench, main: MainService): Promise<void> {
  const answer = await expectVerify(main.client, main.keys.plain, VerifyCode.VALID);
  const load = spec(b, main.child.target, VERIFY_PATH, [verifyFrame(main.keys.plain)]);
  const measured = await measureInMemory(b, main.child, load);
  const { max, half, ratio } = measured;
  await expectVerify(main.client, main.keys.plain, VerifyCode.VALID);
  const wrong = wrongAnswers([max, half], toBinary(VerifyKeyResponseSchema, answer).length);
  b.row({
    scenario: "1. cached VerifyKey (valid key)",
    rps: max.rps,
    ratio,
    p50Ms: half.p50Ms,
    p99Ms: half.p99Ms,
    target: "≥ 0.9×; p50, p99 ≤ 2 ms",
    verdict: !wrong && ratio >= 0.9 && half.p50Ms <= 2 && half.p99Ms <= 2 ? "PASS" : "FAIL",
    notes: wrong ?? halfNote(half) + pairingNote(b, measured),
  });
}

/**
 * 1, in two server processes sharing the port (the service's WORKERS=2), against the no-op baseline in two
 * processes too: what a second process adds on this machine, in total and per process.
 */
export async function workers(b: Bench, main: MainService): Promise<void> {
  const count = 2;
  const answer = await expectVerify(main.client, main.keys.plain, VerifyCode.VALID);
  const encoded = toBinary(VerifyKeyResponseSchema, answer);
  const env = { BENCH_WORKERS: String(count) };
  const service = await startServer("service", { env: serviceEnv(b, b.scratchUrl, env) });
  const base = await startServer("baseline", {
    env: serviceEnv(b, "mysql://unused/unused", { ...env, BENCH_BASELINE_RESPONSE: Buffer.from(encoded).toString("base64") }),
  });
  try {
    await expectVerify(client(service), main.keys.plain, VerifyCode.VALID);
    const serviceLoad = spec(b, service.target, VERIFY_PATH, [verifyFrame(main.keys.plain)]);
    const baseLoad = spec(b, base.target, VERIFY_PATH, [verifyFrame(main.keys.plain)]);
    // Paired, as the other in-memory ratios.
    const runs = await inTurns(b.tool, { load: serviceLoad, server: service }, { load: baseLoad, server: base });
    const stats = await service.stats();
    const wrong = wrongAnswers([...runs.scenario, ...runs.baseline], encoded.length);
    const serviceRps = sumRps(runs.scenario) / runs.scenario.length;
    const baseRps = sumRps(runs.baseline) / runs.baseline.length;
    const single = b.baseline[b.tool]?.rps;
    const shares = (stats.perProcess ?? []).map((p) => p.verified);
    const total = shares.reduce((a, n) => a + n, 0);
    b.row({
      scenario: `no-op baseline, ${count} processes`,
      rps: baseRps,
      target: "—",
      verdict: "info",
      notes: wrong ?? (single ? `${(baseRps / single).toFixed(2)}× the one-process baseline` : ""),
    });
    b.row({
      scenario: `1. cached VerifyKey, ${count} processes`,
      rps: serviceRps,
      ratio: serviceRps / baseRps,
      target: "≥ 0.9× (of the row above)",
      verdict: !wrong && serviceRps / baseRps >= 0.9 ? "PASS" : "FAIL",
      notes:
        wrong ??
        `per process ${Math.round(serviceRps / count)} req/s; calls answered by each: ${shares.map((n) => `${Math.round((100 * n) / Math.max(1, total))}%`).join(", ")}` +
          (single ? `; ${(serviceRps / single).toFixed(2)}× the one-process baseline` : "") +
          `; the ratio's pairs of runs: ${runs.scenario.map((run, i) => `${(run.rps / runs.baseline[i].rps).toFixed(2)}×`).join(", ")}` +
          `; ${cpuNote(runs.cpuPerCall)}`,
    });
  } finally {
    await Promise.all([service.stop(), base.stop()]);
  }
}

/** 2. A key with rate limits and monthly credits, each call costing a credit (shared counters in Redis). */
export async function limits(b: Bench, main: MainService): Promise<void> {
  const scenario = "2. VerifyKey with rate limits + credits";
  const first = await expectVerify(main.client, main.keys.limited, VerifyCode.VALID, 1);
  if (first.rateLimit === undefined && first.remainingCredits === undefined) {
    b.row({ scenario, target: "≥ 0.6×", verdict: "skipped", notes: "skipped: limits not wired" });
    return;
  }
  const load = spec(b, main.child.target, VERIFY_PATH, [verifyFrame(main.keys.limited, 1)]);
  const measured = await measureInMemory(b, main.child, load);
  const { max, half, ratio } = measured;
  const last = await expectVerify(main.client, main.keys.limited, VerifyCode.VALID, 1);
  const consumed = (first.remainingCredits ?? 0n) - (last.remainingCredits ?? 0n);
  const wrong = wrongAnswers([max, half], toBinary(VerifyKeyResponseSchema, first).length);
  b.row({
    scenario,
    rps: max.rps,
    ratio,
    p50Ms: half.p50Ms,
    p99Ms: half.p99Ms,
    target: "≥ 0.6×",
    verdict: !wrong && ratio >= 0.6 ? "PASS" : "FAIL",
    notes: wrong ?? `${halfNote(half)}; ${consumed} credits consumed${pairingNote(b, measured)}`,
  });
}

/** 3. Cold lookups (cache off): every call reads MySQL, over datasets of growing size, with a buffer pool sized for the largest. */
export async function cold(b: Bench): Promise<void> {
  const pool = await ensureBufferPool(b.mysqlServerUrl, Math.max(...b.settings.coldSizes), b.log);
  try {
    await coldRuns(b, pool === null ? "" : `; InnoDB buffer pool ${pool.bytes >> 20} MB for this run (was ${pool.previousBytes >> 20} MB; README: Sizing)`);
  } finally {
    await pool?.restore();
  }
}

async function coldRuns(b: Bench, poolNote: string): Promise<void> {
  const p99s: { size: number; p99: number }[] = [];
  let fastest = 0;
  for (const size of b.settings.coldSizes) {
    const dataset = await openDataset(b.mysqlServerUrl, size, PEPPER, b.log);
    const child = await startServer("service", { env: serviceEnv(b, dataset.url, { CACHE_MAX_ENTRIES: "0" }) });
    try {
      const secrets = await dataset.secrets(Math.min(size, b.settings.coldSample));
      const c = client(child);
      await expectVerify(c, secrets[0], VerifyCode.VALID);
      const before = await child.stats();
      const s = spec(b, child.target, VERIFY_PATH, secrets.map((k) => verifyFrame(k)), { expectCode: VerifyCode.VALID });
      const max = await runLoad("node", s);
      const inFlight = await halfLoadInFlight("node", s, max.rps);
      await child.latencies(); // store latencies from here on are the half-load run's
      const half = { ...(await runLoad("node", { ...s, inFlight })), inFlight };
      const after = await child.stats();
      await expectVerify(c, secrets[secrets.length - 1], VerifyCode.VALID);
      const lookup = after.storeLatency.findByHash;
      const lookups = (after.storeCalls.findByHash ?? 0) - (before.storeCalls.findByHash ?? 0);
      const calls = after.verified[VerifyCode.VALID] - before.verified[VerifyCode.VALID];
      const wrong = wrongAnswers([max, half], null) ?? (lookups < calls ? `only ${lookups} MySQL lookups for ${calls} calls: not cold` : null);
      fastest = Math.max(fastest, max.rps);
      p99s.push({ size, p99: half.p99Ms });
      b.row({
        scenario: `3. cold VerifyKey, ${sizeLabel(size)} keys in MySQL`,
        rps: max.rps,
        ratio: ratioTo(b, "node", max),
        p50Ms: half.p50Ms,
        p99Ms: half.p99Ms,
        target: "p99 ≤ 5 ms",
        verdict: !wrong && half.p99Ms <= 5 ? "PASS" : "FAIL",
        notes:
          wrong ??
          `${halfNote(half)}; ${secrets.length} distinct keys; each call a MySQL lookup (p50/p99 ${lookup.p50.toFixed(2)}/${lookup.p99.toFixed(2)} ms)${poolNote}`,
      });
    } finally {
      await child.stop();
      await dataset.close();
    }
  }
  if (p99s.length > 1) {
    const small = p99s[0];
    const large = p99s[p99s.length - 1];
    const growth = large.p99 / small.p99;
    b.row({
      scenario: `3. cold p99, ${sizeLabel(large.size)} vs ${sizeLabel(small.size)} keys`,
      target: "≤ 1.5× (flat)",
      verdict: growth <= 1.5 ? "PASS" : "FAIL",
      notes: `p99 grew ${growth.toFixed(2)}×`,
    });
  }
  const headroom = b.baseline.node!.rps / fastest;
  b.row({
    scenario: "3. load generator headroom",
    target: "≥ 2× cold",
    verdict: headroom >= 2 ? "PASS" : "FAIL",
    notes: `it drives the no-op baseline at ${headroom.toFixed(1)}× the fastest cold run`,
  });
}

/** 4. Malformed keys (rejected by shape and checksum) and well-formed unknown keys (negative cache). */
export async function negative(b: Bench, main: MainService): Promise<void> {
  const plain = main.keys.plain;
  // Another last character breaks the checksum; the shape stays a key's.
  const malformed = plain.slice(0, -1) + (plain.endsWith("A") ? "B" : "A");
  const unknown = generateSecret("sk");
  for (const [scenario, key, needsNoLookup] of [
    ["4. malformed key", malformed, true],
    ["4. unknown key (well-formed)", unknown, false],
  ] as const) {
    const answer = await expectVerify(main.client, key, VerifyCode.NOT_FOUND);
    const before = await main.child.stats();
    const load = spec(b, main.child.target, VERIFY_PATH, [verifyFrame(key)]);
    const measured = await measureInMemory(b, main.child, load);
    const { max, half, ratio } = measured;
    await expectVerify(main.client, key, VerifyCode.NOT_FOUND);
    const after = await main.child.stats();
    const lookups = (after.storeCalls.findByHash ?? 0) - (before.storeCalls.findByHash ?? 0);
    const calls = after.verified[VerifyCode.NOT_FOUND] - before.verified[VerifyCode.NOT_FOUND];
    const wrong = wrongAnswers([max, half], toBinary(VerifyKeyResponseSchema, answer).length);
    b.row({
      scenario,
      rps: max.rps,
      ratio,
      p50Ms: half.p50Ms,
      p99Ms: half.p99Ms,
      target: needsNoLookup ? "≥ 0.9×; 0 MySQL lookups" : "≥ 0.9×",
      verdict: !wrong && ratio >= 0.9 && (!needsNoLookup || lookups === 0) ? "PASS" : "FAIL",
      notes: wrong ?? `${halfNote(half)}; ${lookups} MySQL lookups in ${calls} calls${pairingNote(b, measured)}`,
    });
  }
}

/**
 * 5. CreateKey against plain mysql2 writing the same rows, at the same
 * concurrency. The keys come from many creators, as in an organization, not
 * all from one (h2load's single body could send nothing else); the raw
 * writer uses the same creators.
 */
export async function createKeys(b: Bench, main: MainService): Promise<void> {
  const organizationId = "org_bench_create";
  const creators = Array.from({ length: CREATORS }, (_, i) => `user_create_${i}`);
  const requests = creators.map((userId) =>
    create(CreateKeyRequestSchema, { organizationId, actor: { userId, role: Role.OWNER }, name: "bench", scopes: DATASET_SCOPES }),
  );
  const sample = await main.client.createKey(requests[0]);
  const pool = mysql.createPool({ uri: b.scratchUrl, connectionLimit: CREATE_CONCURRENCY, timezone: "Z", charset: "UTF8MB4_BIN" });
  const count = async () => {
    const [rows] = await pool.query<RowDataPacket[]>("SELECT COUNT(*) AS n FROM api_keys WHERE organization_id = ?", [organizationId]);
    return Number(rows[0].n);
  };
  try {
    const frames = requests.map((r) => grpcFrame(toBinary(CreateKeyRequestSchema, r)));
    // In turns (service, raw, service, raw), as the in-memory rows are paired with their baseline: this VM's
    // speed drifts over minutes. CPU per create of the service and of MySQL, and per transaction of the raw
    // writer and MySQL, over all the runs: on a machine whose cores the database, the service and the load
    // share, these set the throughputs.
    const serviceRuns: LoadResult[] = [];
    const rawRuns: RawResult[] = [];
    const used = { service: 0, serviceMysql: 0 as number | null, raw: 0, rawMysql: 0 as number | null, created: 0, commits: 0 };
    const add = (total: number | null, from: number | null, to: number | null) => (total === null || from === null || to === null ? null : total + to - from);
    for (let round = 0; round < 2; round++) {
      const [keys0, mysqld0, commits0, service0] = [await count(), await mysqldCpuMicros(pool), await commits(pool), await main.child.usage()];
      // Many bodies: the Node load generator (far faster than CreateKey can go).
      serviceRuns.push(await runLoad("node", spec(b, main.child.target, CREATE_PATH, frames, { inFlight: CREATE_CONCURRENCY })));
      const [service1, mysqld1, commits1, keys1] = [await main.child.usage(), await mysqldCpuMicros(pool), await commits(pool), await count()];
      const raw0 = process.cpuUsage();
      rawRuns.push(
        await rawInserts(pool, {
          concurrency: CREATE_CONCURRENCY,
          durationS: b.settings.durationS,
          warmupS: b.settings.warmupS,
          pepper: PEPPER,
          organizationId,
          creators,
        }),
      );
      const raw1 = process.cpuUsage(raw0);
      const mysqld2 = await mysqldCpuMicros(pool);
      used.created += keys1 - keys0;
      used.commits += commits1 - commits0;
      used.service += service1.cpuMicros - service0.cpuMicros;
      used.serviceMysql = add(used.serviceMysql, mysqld0, mysqld1);
      used.raw += raw1.user + raw1.system;
      used.rawMysql = add(used.rawMysql, mysqld1, mysqld2);
    }
    // Warm-up calls included: the CPU readings span them too.
    const rawCalls = rawRuns.reduce((sum, r) => sum + r.requests + r.warmupRequests, 0);
    const perCall = (micros: number | null, calls: number) => (micros === null ? "?" : `${Math.round(micros / Math.max(1, calls))} µs`);
    const answered = serviceRuns.reduce((sum, r) => sum + r.requests, 0);
    // Every answered call must have created a key.
    const wrong =
      wrongAnswers(serviceRuns, toBinary(CreateKeyResponseSchema, sample).length) ??
      (used.created < answered ? `${answered} answers but ${used.created} keys created` : null);
    const ratio = sumRps(serviceRuns) / sumRps(rawRuns);
    const pairs = serviceRuns.map((run, i) => `${(run.rps / rawRuns[i].rps).toFixed(2)}×`).join(", ");
    const shape = `${CREATE_CONCURRENCY} in flight, ${CREATORS} creators`;
    const [service, raw] = [serviceRuns[1], rawRuns[1]];
    b.row({
      scenario: "5. CreateKey",
      rps: sumRps(serviceRuns) / serviceRuns.length,
      ratio,
      p50Ms: service.p50Ms,
      p99Ms: service.p99Ms,
      target: "≥ 0.7× raw INSERT",
      verdict: !wrong && ratio >= 0.7 ? "PASS" : "FAIL",
      notes:
        wrong ??
        `× is to the raw INSERT row, in turns (service, raw, service, raw; pairs ${pairs}); p50/p99 of the second run at ${shape}; ` +
          `CPU per create: the service ${perCall(used.service, used.created)}, MySQL ${perCall(used.serviceMysql, used.created)}; ` +
          `${(used.created / Math.max(1, used.commits)).toFixed(1)} creates per transaction (batched)`,
    });
    b.row({
      scenario: "5. raw mysql2 INSERT, same rows",
      rps: sumRps(rawRuns) / rawRuns.length,
      p50Ms: raw.p50Ms,
      p99Ms: raw.p99Ms,
      target: "—",
      verdict: "info",
      notes:
        `5 INSERTs in a transaction; p50/p99 of the second run at ${shape}; CPU per transaction: the writer ` +
        `${perCall(used.raw, rawCalls)}, MySQL ${perCall(used.rawMysql, rawCalls)}`,
    });
  } finally {
    await pool.end();
  }
}

/** 6. Revocation seen by every instance: three servers sharing MySQL and Redis. */
export async function revoke(b: Bench): Promise<void> {
  const instances: ServerChild[] = [];
  // A redis-server of the three instances' own: on the bench's, the main service (idle, but subscribed) would
  // be a fourth instance that every revocation has to reach and hear back from.
  const redis = await TestRedis.start();
  try {
    for (let i = 0; i < 3; i++) instances.push(await startServer("service", { env: { ...serviceEnv(b, b.scratchUrl), REDIS_URL: redis.url } }));
    // The keys are created through the first instance; everything else goes through the lean client below.
    const creator = client(instances[0]);
    const { revocations: n, revokeWarmup } = b.settings;
    // The keys to warm up with are revoked first, unmeasured.
    const created: { id: string; secret: string }[] = [];
    for (let i = 0; i < revokeWarmup + n; i += CREATE_CONCURRENCY) {
      const batch = Array.from({ length: Math.min(CREATE_CONCURRENCY, revokeWarmup + n - i) }, () =>
        creator.createKey({ organizationId: "org_bench_revoke", actor: OWNER, name: "bench: revoke", scopes: DATASET_SCOPES }),
      );
      for (const res of await Promise.all(batch)) created.push({ id: res.key!.id, secret: res.secret });
    }
    const [warmKeys, keys] = [created.slice(0, revokeWarmup), created.slice(revokeWarmup)];
    // Measured from a lean client in a process of its own (runRounds): the Connect client here adds about
    // 0.6 ms to the median of a call and several to its p99. Each run first warms its client up with cached
    // VerifyKeys, and the revocations were warmed up in the instances by a run of their own: 5,000 in a full
    // run. After 1,000, V8 still compiled about 40 functions of the revoke path (revokeKey, invalidate, the
    // transaction, ioredis's decoder…) for the first time in each instance during the measured revocations,
    // on its background threads, competing for the 2 cores (a V8 log, --log-code). RevokeKey p99: 6.1–8.6 ms
    // in 7 runs after 1,000; 4.5–5.6 ms in 3 after 3,000; 4.1–5.7 ms in 11 after 5,000.
    const targets = instances.map((i) => i.target);
    const verifies = new Map(created.map((k) => [k.id, verifyFrame(k.secret)]));
    const verify = (k: { id: string }, target: number, expectCode: VerifyCode) => ({ target, path: VERIFY_PATH, frame: verifies.get(k.id)!, expectCode });
    // Every instance holds every key in its cache: the revocation has something to evict.
    const caching = await runRounds({
      targets,
      token: TOKEN,
      rounds: created.map((k) => ({ call: verify(k, 0, VerifyCode.VALID), then: [verify(k, 1, VerifyCode.VALID), verify(k, 2, VerifyCode.VALID)] })),
    });
    failedRounds(caching, "VerifyKey (caching every key on every instance)");
    if (caching.passed !== created.length) throw new Error(`only ${caching.passed} of ${created.length} keys VALID on every instance`);
    const cachedPass = keys.map((k, i) => ({ call: verify(k, i % 3, VerifyCode.VALID), then: [] }));
    // Five such passes warm the client up (a bare node:http2 client's p99 one call at a time: 3.2 ms after 300
    // calls, 0.9 ms after 5,000).
    const clientWarmup = Array.from({ length: 5 }, () => cachedPass).flat();
    // Each instance takes its turn as the one revoking; right after, all three must answer REVOKED.
    const revoking = (list: { id: string }[]) =>
      list.map((k, i) => ({
        call: { target: i % 3, path: REVOKE_PATH, frame: revokeFrame("org_bench_revoke", k.id) },
        then: [0, 1, 2].map((t) => verify(k, t, VerifyCode.REVOKED)),
      }));
    const warm = await runRounds({ targets, token: TOKEN, rounds: revoking(warmKeys) });
    failedRounds(warm, "RevokeKey (warming up)");
    // What a run's slowest calls may have waited for: a GC pause in the client or an instance, or a CPU.
    const gcPauses = async () => (await Promise.all(instances.map((i) => i.gcPauses()))).flat();
    const tailNotes = async (run: RoundsResult) => {
      const { slowest, duringGc } = slowestDuringPauses(run.sent, run.latencies, [...run.pauses, ...(await gcPauses())]);
      const waited = run.cpuWaitShare === null ? "" : `; some task was waiting for a CPU ${(run.cpuWaitShare * 100).toFixed(0)}% of the time`;
      return `of the ${slowest} slowest, ${duringGc} overlapped a GC pause in the client or an instance${waited}`;
    };
    await gcPauses();
    // The floor of any call made one at a time through this client and stack on this machine: a cached VerifyKey.
    const floor = await runRounds({ targets, token: TOKEN, warmup: clientWarmup, rounds: cachedPass });
    failedRounds(floor, "VerifyKey");
    const oneCall = samplesOf(floor.latencies);
    const floorTail = await tailNotes(floor);
    // Drained: from here on, each instance's store latencies, evictions and GC pauses are those of these revocations
    // (latencies, not stats: no forced full GC right before the measured run).
    await Promise.all(instances.map((i) => Promise.all([i.latencies(), i.evictions(), i.gcPauses()])));
    const revokes = await runRounds({ targets, token: TOKEN, warmup: clientWarmup, rounds: revoking(keys) });
    failedRounds(revokes, "RevokeKey");
    const latencies = samplesOf(revokes.latencies);
    const revokesTail = await tailNotes(revokes);
    // How long each revocation took to reach the other two instances: from sending RevokeKey to the later of
    // their evictions (the moment each stops answering from its cache), on the clock all processes share.
    const evictions = await Promise.all(instances.map((i) => i.evictions()));
    const propagation = new Samples();
    let notEvicted = 0;
    keys.forEach((k, i) => {
      const others = evictions.filter((_, t) => t !== i % 3).map((e) => e[k.id]);
      if (others.some((at) => at === undefined)) return void notEvicted++;
      const last = others.map((at) => BigInt(at)).reduce((a, b) => (a > b ? a : b));
      propagation.add(Number(last - BigInt(revokes.sent[i])) / 1e6);
    });
    const p99 = latencies.percentile(99);
    // The database's share of it (the store's revokeKey: update, audit, read back, commit) and the broadcast's
    // (publish to the last ack), per instance.
    const shares = await Promise.all(instances.map((i) => i.stats()));
    const latency = (l: { p50: number; p99: number } | undefined) => (l ? `${l.p50.toFixed(2)}/${l.p99.toFixed(2)}` : "—");
    const store = shares.map((st) => latency(st.storeLatency.revokeKey)).join(", ");
    // Three and no more: every subscriber on the Redis must acknowledge each revocation.
    const receivers = [...new Set(shares.map((st) => st.broadcastReceivers))];
    const reachedThree = receivers.length === 1 && receivers[0] === 3;
    const broadcast = shares.map((st) => latency(st.broadcastLatency)).join(", ");
    // The database's floor, measured right after on the same tables, after a run to warm up like the service's.
    const pool = mysql.createPool({ uri: b.scratchUrl, connectionLimit: 1, timezone: "Z", charset: "UTF8MB4_BIN", multipleStatements: true });
    let raw: { latencies: Samples; seconds: number };
    try {
      const rawRun = () => rawRevokes(pool, { count: n, pepper: PEPPER, organizationId: "org_bench_revoke", userId: OWNER.userId });
      await rawRun();
      raw = await rawRun();
    } finally {
      await pool.end();
    }
    b.row({
      scenario: "6. RevokeKey → rejected on all 3 instances",
      rps: keys.length / revokes.seconds,
      p50Ms: latencies.percentile(50),
      p99Ms: p99,
      target: "p99 ≤ 5 ms; all rejected",
      verdict: revokes.passed === keys.length && reachedThree && p99 <= 5 ? "PASS" : "FAIL",
      notes:
        `RevokeKey latency, one at a time from a lean client, after ${warmKeys.length} revocations to warm up; ` +
        `${revokes.passed}/${keys.length} REVOKED on every instance right after; ` +
        `each published to ${receivers.join(" or ")} instances (Redis's count); ` +
        `of which, p50/p99 by instance, the MySQL transaction ${store} ms and the broadcast to the last ack ${broadcast} ms ` +
        `(the rest: the gRPC call itself); ${revokesTail}`,
    });
    b.row({
      scenario: "6. RevokeKey sent → evicted on the other 2",
      p50Ms: propagation.percentile(50),
      p99Ms: propagation.percentile(99),
      target: "—",
      verdict: notEvicted === 0 ? "info" : "FAIL",
      notes:
        `the same revocations: from sending RevokeKey to the later of the other two instances evicting the key (from then on it ` +
        `answers REVOKED); RevokeKey returns after their acknowledgements reach the revoking instance` +
        (notEvicted === 0 ? "" : `; ${notEvicted} keys not evicted on every other instance`),
    });
    b.row({
      scenario: "6. cached VerifyKey, one at a time",
      rps: oneCall.size / floor.seconds,
      p50Ms: oneCall.percentile(50),
      p99Ms: oneCall.percentile(99),
      target: "—",
      verdict: "info",
      notes:
        `the gRPC call's floor: the same client and instances, no database, no broadcast; ${oneCall.size} calls (after ` +
        `${clientWarmup.length} to warm up); ${floorTail}`,
    });
    b.row({
      scenario: "6. raw mysql2 revoke transaction",
      rps: raw.latencies.size / raw.seconds,
      p50Ms: raw.latencies.percentile(50),
      p99Ms: raw.latencies.percentile(99),
      target: "—",
      verdict: "info",
      notes: `the database's floor: UPDATE + audit INSERT + COMMIT in one round trip, one at a time, ${raw.latencies.size} keys`,
    });
  } finally {
    await Promise.all(instances.map((i) => i.stop()));
    await redis.kill();
  }
}

/** 7. Memory with the cache full of distinct keys, and how often last-used times reach MySQL. */
export async function memory(b: Bench): Promise<void> {
  const n = b.settings.memoryKeys;
  const dataset = await openDataset(b.mysqlServerUrl, n, PEPPER, b.log);
  // Last-used times flushed every second, so the run sees its flushes.
  const child = await startServer("service", {
    env: serviceEnv(b, dataset.url, { CACHE_MAX_ENTRIES: String(n), LAST_USED_FLUSH_SECONDS: "1" }),
  });
  try {
    const frames = (await dataset.secrets(n)).map((k) => verifyFrame(k));
    // The same server with its cache empty: what the entries add is the difference.
    const empty = await child.stats();
    const warm = await runLoad("node", { ...spec(b, child.target, VERIFY_PATH, frames, { expectCode: VerifyCode.VALID }), once: true });
    // Right after 100k cold loads the heap holds their garbage, and V8 gives that space back when the
    // load is over: the row's figure is the RSS once it has (settledRss), read without forcing a GC.
    const afterWarm = await child.rss();
    const settled = await settledRss(child);
    const full = await child.stats();
    const perEntry = (field: "heapAfterGc" | "externalAfterGc") => ((full[field] - empty[field]) / Math.max(1, full.cacheSize)).toFixed(0);
    // Cached verifications of all those keys, then a flush interval for their last-used times.
    const busy = await runLoad("node", spec(b, child.target, VERIFY_PATH, frames, { expectCode: VerifyCode.VALID }));
    const underLoad = await child.rss();
    await new Promise((r) => setTimeout(r, 1500));
    const end = await child.stats();
    const wrong = wrongAnswers([warm], null) ?? (full.cacheSize < n ? `only ${full.cacheSize} of ${n} keys cached` : null);
    const limit = 250 * 2 ** 20;
    const atTargetSize = n >= 100_000;
    b.row({
      scenario: `7. RSS with ${sizeLabel(n)} keys cached`,
      target: atTargetSize ? "≤ 250 MB" : "≤ 250 MB at 100k",
      verdict: wrong ? "FAIL" : !atTargetSize ? "info" : settled.rss <= limit ? "PASS" : "FAIL",
      notes:
        wrong ??
        `RSS ${mb(settled.rss)} MB ${settled.seconds} s after warming (${mb(afterWarm)} MB right after the ${n} cold loads; ` +
          `${mb(underLoad)} MB at the end of a cached load of them); heap ${mb(full.heapAfterGc)} of ${mb(full.heapTotalAfterGc)} MB ` +
          `after a full GC, external ${mb(full.externalAfterGc)} MB; ${full.cacheSize} entries, ${perEntry("heapAfterGc")} B of heap + ` +
          `${perEntry("externalAfterGc")} B external each (vs the empty cache: RSS ${mb(empty.rssAfterGc)} MB, heap ${mb(empty.heapAfterGc)} MB)`,
    });
    const verifications = end.verified[VerifyCode.VALID];
    const writes = end.storeCalls.lastUsedUpdates ?? 0;
    const share = writes / verifications;
    const wrongBusy = wrongAnswers([busy], null);
    b.row({
      scenario: "7. last-used writes per verification",
      target: "≤ 1%",
      verdict: !wrongBusy && share <= 0.01 ? "PASS" : "FAIL",
      notes: wrongBusy ?? `${writes} UPDATE round trips (${end.storeCalls.touchLastUsed ?? 0} flushes) for ${verifications} verifications (${(share * 100).toFixed(4)}%)`,
    });
  } finally {
    await child.stop();
    await dataset.close();
  }
}

/**
 * The server's RSS once V8 has given back the space a burst grew: V8's memory reducer does that some
 * 30–40 s after the allocation rate drops (seen here: 336 → 170 MB at once). Read every 5 s without
 * forcing a GC, until it fell by 10% and held, or for 60 s.
 */
async function settledRss(child: ServerChild): Promise<{ rss: number; seconds: number }> {
  const started = performance.now();
  const first = await child.rss();
  let previous = first;
  for (;;) {
    await new Promise((r) => setTimeout(r, 5000));
    const rss = await child.rss();
    const seconds = Math.round((performance.now() - started) / 1000);
    if ((previous < first * 0.9 && rss >= previous * 0.99) || seconds >= 60) return { rss, seconds };
    previous = rss;
  }
}

/** CPU time the database server process used so far, µs; null when it is not a local process whose /proc we can read. */
/** Transactions the server has committed so far (all sessions). */
async function commits(pool: mysql.Pool): Promise<number> {
  const [rows] = await pool.query<RowDataPacket[]>("SHOW GLOBAL STATUS LIKE 'Com_commit'");
  return Number(rows[0].Value);
}

async function mysqldCpuMicros(pool: mysql.Pool): Promise<number | null> {
  try {
    const [rows] = await pool.query<RowDataPacket[]>("SELECT @@pid_file AS f");
    const pid = (await readFile(String(rows[0].f), "utf8")).trim();
    // Fields after the command name: utime and stime are the 12th and 13th, in clock ticks (100 per second on Linux).
    const fields = (await readFile(`/proc/${pid}/stat`, "utf8")).split(") ")[1].split(" ");
    return (Number(fields[11]) + Number(fields[12])) * 10_000;
  } catch {
    return null;
  }
}

/**
 * The service under the cached load with node --cpu-prof, apart from the
 * measured runs (profiling slows it down). Keeps the profile as `destination`
 * (open it in Chrome DevTools or speedscope) and returns the top self-time functions.
 */
export async function profileCached(b: Bench, main: MainService, destination: string, root: string): Promise<string[]> {
  const dir = await mkdtemp(join(tmpdir(), "apikeys-bench-profile-"));
  try {
    const child = await startServer("service", { env: serviceEnv(b, b.scratchUrl), cpuProfileDir: dir });
    try {
      await expectVerify(client(child), main.keys.plain, VerifyCode.VALID);
      await runLoad(b.tool, spec(b, child.target, VERIFY_PATH, [verifyFrame(main.keys.plain)]));
    } finally {
      await child.stop();
    }
    const file = (await readdir(dir)).find((f) => f.endsWith(".cpuprofile"));
    if (!file) throw new Error("the profiled server wrote no CPU profile");
    await copyFile(join(dir, file), destination);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  return [`profile: ${destination}`, ...(await topSelfTime(destination, 20, root))];
}

function mb(bytes: number): string {
  return (bytes / 2 ** 20).toFixed(0);
}
