// VerifyKey with limits on a 3-master Redis Cluster, against the same on the
// run's single Redis: the same keys (one database), the same load, paired runs
// (cluster, single, cluster, single) so that drift cancels out. The load cycles
// through keys whose counters sit on every master, so it comes from the Node
// load generator (h2load sends one fixed body); both sides get the same.
import { toBinary } from "@bufbuild/protobuf";
import { VerifyCode, VerifyKeyResponseSchema } from "../../gen/apikeys/v1/apikeys_pb.js";
import { COUNTER_KEYS } from "../../src/limits/redis-usage-limiter.js";
import { MonthClock } from "../../src/limits/windows.js";
import { TestRedisCluster } from "../../test/helpers/redis-cluster.js";
import { type ServerChild, startServer } from "../children.js";
import { runLoad } from "../load.js";
import {
  type Bench,
  type MainService,
  OWNER,
  VERIFY_PATH,
  client,
  cpuNote,
  expectVerify,
  halfNote,
  inTurns,
  maxAndHalf,
  serviceEnv,
  spec,
  sumRps,
  verifyFrame,
  wrongAnswers,
} from "./harness.js";

/** Keys the load cycles through: enough that their counters land on every master. */
const KEYS = 12;
const TARGET = "≥ 0.9× single Redis";

export async function limitsCluster(b: Bench, main: MainService): Promise<void> {
  const scenario = "2b. VerifyKey with limits on a 3-master Redis Cluster";
  const cluster = await TestRedisCluster.start();
  let child: ServerChild | null = null;
  try {
    // Created through the main service, before the cluster's service starts: the two share the database but
    // not a broadcast bus (one Redis each), so a key created on one would never reach the other's membership
    // filter of stored secrets (it would answer NOT_FOUND); a service loads its filter from the database at start.
    const keys = [];
    for (let i = 0; i < KEYS; i++) {
      const created = await main.client.createKey({
        organizationId: "org_bench_cluster",
        actor: OWNER,
        name: `bench: limits on a cluster ${i}`,
        scopes: [],
        limits: { requestsPerMinute: 4_000_000_000, requestsPerDay: 4_000_000_000, monthlyCredits: BigInt(Number.MAX_SAFE_INTEGER) },
      });
      keys.push({ id: created.key!.id, secret: created.secret });
    }
    child = await startServer("service", { env: serviceEnv(b, b.scratchUrl, { REDIS_CLUSTER_NODES: cluster.seeds }) });
    const onCluster = client(child);
    const month = new MonthClock().at(Date.now());
    const masters = new Set(await Promise.all(keys.map((k) => cluster.masterFor(COUNTER_KEYS.credits(k.id, month)))));
    // Each service has each key cached (and its counters seeded) before anything is measured.
    let answer = 0;
    for (const key of keys) {
      for (const c of [onCluster, main.client]) answer = toBinary(VerifyKeyResponseSchema, await expectVerify(c, key.secret, VerifyCode.VALID, 1)).length;
    }
    const frames = keys.map((k) => verifyFrame(k.secret, 1));
    const clusterLoad = spec(b, child.target, VERIFY_PATH, frames);
    const singleLoad = spec(b, main.child.target, VERIFY_PATH, frames);
    if (b.settings.soakS > 0) {
      for (const load of [singleLoad, clusterLoad]) await runLoad("node", { ...load, durationS: b.settings.soakS, warmupS: 0 });
    }
    const { max, half } = await maxAndHalf("node", clusterLoad);
    const runs = await inTurns("node", { load: clusterLoad, server: child }, { load: singleLoad, server: main.child }, max);
    const ratio = sumRps(runs.scenario) / sumRps(runs.baseline);
    const wrong = wrongAnswers([max, half, ...runs.scenario, ...runs.baseline], answer);
    const pairs = runs.scenario.map((run, i) => `${(run.rps / runs.baseline[i].rps).toFixed(2)}×`).join(", ");
    b.row({
      scenario,
      rps: max.rps,
      ratio,
      p50Ms: half.p50Ms,
      p99Ms: half.p99Ms,
      target: TARGET,
      verdict: !wrong && ratio >= 0.9 ? "PASS" : "FAIL",
      notes:
        wrong ??
        `ratio to the same load on the run's single Redis (${Math.round(sumRps(runs.baseline) / 2)} req/s), not to the no-op baseline; ${KEYS} keys, counters on ${masters.size} masters, load from the Node load generator; ${halfNote(half)}; pairs: ${pairs}; ${cpuNote(runs.cpuPerCall)} (baseline = single Redis)`,
    });
  } finally {
    await child?.stop();
    await cluster.stop();
  }
}
