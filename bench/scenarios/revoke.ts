import { create, toBinary } from "@bufbuild/protobuf";
import mysql from "mysql2/promise";
import { RevokeKeyRequestSchema, VerifyCode } from "../../gen/apikeys/v1/apikeys_pb.js";
import { TestRedis } from "../../test/helpers/redis.js";
import { type ServerChild, startServer } from "../children.js";
import { DATASET_SCOPES } from "../dataset.js";
import { type RoundsResult, grpcFrame, runRounds } from "../load.js";
import { slowestDuringPauses } from "../pauses.js";
import { rawRevokes } from "../raw-insert.js";
import { Samples } from "../stats.js";
import { type Bench, CREATE_CONCURRENCY, OWNER, PEPPER, TOKEN, VERIFY_PATH, client, serviceEnv, verifyFrame } from "./harness.js";

const REVOKE_PATH = "/apikeys.v1.ApiKeyService/RevokeKey";

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
