// 6b–6d. RevokeKey on the topologies of issue 19, each as a ratio of two
// configurations measured one after the other in the same run, the same way:
// - revoke-cluster: 3 instances on a 3-master Redis Cluster ÷ on a single Redis;
// - revoke-stalled: 4 instances, one SIGSTOPped past its lease ÷ none stalled;
// - revoke-many:    10 instances ÷ 3 instances on one Redis.
// Each configuration: keys created and cached on every running instance, a
// run of revocations to warm up, then revocations one at a time from the lean
// client (runRounds, as row 6), through the instances in turn; after each, every
// running instance must answer REVOKED (not timed). The row's p50/p99 are the
// topology's; the ratio of the p99s is its verdict. Not in --smoke (it would
// add minutes to npm test): `--quick --only revoke-cluster,…` is the short run.
import { create, toBinary } from "@bufbuild/protobuf";
import { RevokeKeyRequestSchema, VerifyCode } from "../../gen/apikeys/v1/apikeys_pb.js";
import { TestRedisCluster } from "../../test/helpers/redis-cluster.js";
import { TestRedis } from "../../test/helpers/redis.js";
import { type ServerChild, startServer } from "../children.js";
import { DATASET_SCOPES } from "../dataset.js";
import { type Round, type RoundCall, type RoundsResult, grpcFrame, runRounds } from "../load.js";
import type { Row } from "../report.js";
import { Samples } from "../stats.js";
import { type Bench, CREATE_CONCURRENCY, OWNER, TOKEN, VERIFY_PATH, client, serviceEnv, verifyFrame } from "./harness.js";

const REVOKE_PATH = "/apikeys.v1.ApiKeyService/RevokeKey";
/** The service's defaults (CACHE_LEASE_MS and the broadcast's margin): a stalled instance is out of every lease after this. */
const LEASE_MS = 1500;
const MARGIN_MS = 500;
/**
 * Revocations to warm up each configuration with, at most: the revoke row's 5,000 would be 30,000 keys here.
 * Both sides of a ratio are warmed up alike.
 */
const MAX_WARMUP = 2000;

interface Measured {
  samples: Samples;
  passed: number;
  count: number;
  warmup: number;
  /** The measured revocations' keys, as VerifyKey frames. */
  revoked: Buffer[];
}

/** Starts `n` service instances on the scratch database, instance i with `redisEnv(i)`. */
async function instancesOn(b: Bench, n: number, redisEnv: (i: number) => Record<string, string>, into: ServerChild[]): Promise<void> {
  for (let i = into.length; i < n; i++) into.push(await startServer("service", { env: { ...serviceEnv(b, b.scratchUrl), ...redisEnv(i) } }));
}

/**
 * One configuration's RevokeKey latencies: revocations through `through` in turn, each followed by a check that
 * every instance in `check` answers REVOKED. Keys live in an organization of their own.
 */
async function measure(b: Bench, instances: ServerChild[], through: number[], check: number[], organizationId: string): Promise<Measured> {
  const n = b.settings.revocations;
  const warmup = Math.min(b.settings.revokeWarmup, MAX_WARMUP);
  const creator = client(instances[through[0]]);
  const created: { id: string; frame: Buffer }[] = [];
  for (let i = 0; i < warmup + n; i += CREATE_CONCURRENCY) {
    const batch = Array.from({ length: Math.min(CREATE_CONCURRENCY, warmup + n - i) }, () =>
      creator.createKey({ organizationId, actor: OWNER, name: "bench: revoke topologies", scopes: DATASET_SCOPES }),
    );
    for (const res of await Promise.all(batch)) created.push({ id: res.key!.id, frame: verifyFrame(res.secret) });
  }
  const targets = instances.map((i) => i.target);
  const verify = (k: { frame: Buffer }, target: number, expectCode: VerifyCode): RoundCall => ({ target, path: VERIFY_PATH, frame: k.frame, expectCode });
  const revoking = (list: typeof created): Round[] =>
    list.map((k, i) => ({
      call: { target: through[i % through.length], path: REVOKE_PATH, frame: revokeFrame(organizationId, k.id) },
      then: check.map((t) => verify(k, t, VerifyCode.REVOKED)),
    }));
  // Every key in every checked instance's cache: each revocation has something to evict everywhere.
  const caching = await runRounds({
    targets,
    token: TOKEN,
    rounds: created.map((k) => ({ call: verify(k, check[0], VerifyCode.VALID), then: check.slice(1).map((t) => verify(k, t, VerifyCode.VALID)) })),
  });
  failed(caching, "VerifyKey (caching every key)");
  const [warmKeys, keys] = [created.slice(0, warmup), created.slice(warmup)];
  failed(await runRounds({ targets, token: TOKEN, rounds: revoking(warmKeys) }), "RevokeKey (warming up)");
  // The client warms up with cached VerifyKeys of the keys about to be revoked, as row 6's does.
  const clientWarmup = Array.from({ length: 5 }, () => keys.map((k, i) => ({ call: verify(k, check[i % check.length], VerifyCode.VALID), then: [] }))).flat();
  const revokes = await runRounds({ targets, token: TOKEN, warmup: clientWarmup, rounds: revoking(keys) });
  failed(revokes, "RevokeKey");
  const samples = new Samples();
  for (const ms of revokes.latencies) samples.add(ms);
  return { samples, passed: revokes.passed, count: keys.length, warmup, revoked: keys.map((k) => k.frame) };
}

function revokeFrame(organizationId: string, keyId: string): Buffer {
  return grpcFrame(toBinary(RevokeKeyRequestSchema, create(RevokeKeyRequestSchema, { organizationId, keyId, actor: OWNER, reason: "bench" })));
}

/** A round whose timed call failed aborts the row: its latency would not be that of the call measured. */
function failed(result: RoundsResult, what: string): void {
  const failures = Object.entries(result.failures).map(([why, count]) => `${count} × ${why}`);
  if (failures.length > 0) throw new Error(`${what} failed: ${failures.join(", ")}`);
}

const ms = (v: number) => v.toFixed(2);

/** In --smoke, a row that says it did not run (see Settings.revokeTopologies). */
function skippedInSmoke(b: Bench, scenario: string, target: string): boolean {
  if (b.settings.revokeTopologies) return false;
  b.row({ scenario, target, verdict: "skipped", notes: "not in --smoke: run with --quick or in full" });
  return true;
}

const CLUSTER_ROW = "6b. RevokeKey, 3 instances on a 3-master Redis Cluster";
const STALLED_ROW = "6c. RevokeKey, one of 4 instances stalled past its lease";
const MANY_ROW = "6d. RevokeKey, 10 instances on one Redis";

/** The row comparing `topology` with `baseline`: PASS when every check passed and the p99 ratio is within `limit`. */
function ratioRow(scenario: string, limit: number, topology: Measured, baseline: Measured, what: [string, string], extra = ""): Row {
  const ratio = topology.samples.percentile(99) / baseline.samples.percentile(99);
  const allRevoked = topology.passed === topology.count && baseline.passed === baseline.count;
  return {
    scenario,
    p50Ms: topology.samples.percentile(50),
    p99Ms: topology.samples.percentile(99),
    target: `p99 ≤ ${limit}× ${what[1]}`,
    verdict: allRevoked && ratio <= limit ? "PASS" : "FAIL",
    notes:
      `p99 ${ratio.toFixed(2)}× ${what[1]} (p50/p99: ${what[0]} ${ms(topology.samples.percentile(50))}/${ms(topology.samples.percentile(99))} ms, ` +
      `${what[1]} ${ms(baseline.samples.percentile(50))}/${ms(baseline.samples.percentile(99))} ms), measured one after the other in this run; ` +
      `${topology.count} revocations each, one at a time from a lean client after ${topology.warmup} to warm up; ` +
      `REVOKED on every running instance right after: ${topology.passed}/${topology.count} and ${baseline.passed}/${baseline.count}${extra}`,
  };
}

/** 6b. Three instances on a 3-master Redis Cluster, each seeded with a different master, ÷ on one Redis. */
export async function revokeCluster(b: Bench): Promise<void> {
  if (skippedInSmoke(b, CLUSTER_ROW, "p99 ≤ 1.5× single Redis")) return;
  let single: Measured;
  {
    const instances: ServerChild[] = [];
    const redis = await TestRedis.start();
    try {
      await instancesOn(b, 3, () => ({ REDIS_URL: redis.url }), instances);
      single = await measure(b, instances, [0, 1, 2], [0, 1, 2], "org_bench_revoke_single");
    } finally {
      await Promise.all(instances.map((i) => i.stop()));
      await redis.kill();
    }
  }
  const instances: ServerChild[] = [];
  const cluster = await TestRedisCluster.start({ replicas: 0 });
  try {
    const masters = await cluster.masters();
    await instancesOn(b, 3, (i) => ({ REDIS_CLUSTER_NODES: `127.0.0.1:${masters[i]}` }), instances);
    const clustered = await measure(b, instances, [0, 1, 2], [0, 1, 2], "org_bench_revoke_cluster");
    b.row(ratioRow(CLUSTER_ROW, 1.5, clustered, single, ["cluster", "single Redis"]));
  } finally {
    await Promise.all(instances.map((i) => i.stop()));
    await cluster.stop();
  }
}

/** 6c. Four instances, one of them SIGSTOPped for longer than its lease, ÷ none stalled. */
export async function revokeStalled(b: Bench): Promise<void> {
  if (skippedInSmoke(b, STALLED_ROW, "p99 ≤ 2× none stalled")) return;
  const instances: ServerChild[] = [];
  const redis = await TestRedis.start();
  let stalled = false;
  try {
    await instancesOn(b, 4, () => ({ REDIS_URL: redis.url }), instances);
    // Revoking through the same three in both: only the fourth instance's state differs.
    const none = await measure(b, instances, [0, 1, 2], [0, 1, 2, 3], "org_bench_revoke_none_stalled");
    instances[3].pause();
    stalled = true;
    const stalledAt = Date.now();
    await new Promise((r) => setTimeout(r, 2 * (LEASE_MS + MARGIN_MS)));
    // The running three only as the client's targets: a stopped process accepts a TCP connection and never
    // answers the HTTP/2 handshake.
    const one = await measure(b, instances.slice(0, 3), [0, 1, 2], [0, 1, 2], "org_bench_revoke_one_stalled");
    const stoppedS = (Date.now() - stalledAt) / 1000;
    instances[3].resume();
    stalled = false;
    // Woken up, it must not accept any key revoked while it was stopped: every one of them, asked once it runs again.
    const woke = await runRounds({
      targets: [instances[3].target],
      token: TOKEN,
      rounds: one.revoked.map((frame) => ({ call: { target: 0, path: VERIFY_PATH, frame, expectCode: VerifyCode.REVOKED }, then: [] })),
    });
    const accepted = one.count - woke.passed;
    const row = ratioRow(STALLED_ROW, 2, one, none, ["one stalled", "none stalled"], `; the stalled instance was stopped ${stoppedS.toFixed(1)} s (lease ${LEASE_MS} ms + margin ${MARGIN_MS} ms)`);
    b.row(accepted === 0 ? row : { ...row, verdict: "FAIL", notes: `${row.notes}; resumed, it did not answer REVOKED for ${accepted} keys revoked while it was stopped` });
  } finally {
    if (stalled) instances[3].resume();
    await Promise.all(instances.map((i) => i.stop()));
    await redis.kill();
  }
}

/** 6d. Ten instances on one Redis ÷ three. */
export async function revokeMany(b: Bench): Promise<void> {
  if (skippedInSmoke(b, MANY_ROW, "p99 ≤ 2× 3 instances")) return;
  const instances: ServerChild[] = [];
  const redis = await TestRedis.start();
  try {
    const env = () => ({ REDIS_URL: redis.url });
    await instancesOn(b, 3, env, instances);
    const three = await measure(b, instances, [0, 1, 2], [0, 1, 2], "org_bench_revoke_three");
    await instancesOn(b, 10, env, instances);
    const all = instances.map((_, i) => i);
    const ten = await measure(b, instances, all, all, "org_bench_revoke_ten");
    b.row(ratioRow(MANY_ROW, 2, ten, three, ["10 instances", "3 instances"]));
  } finally {
    await Promise.all(instances.map((i) => i.stop()));
    await redis.kill();
  }
}
