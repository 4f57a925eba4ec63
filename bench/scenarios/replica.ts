import { VerifyCode } from "../../gen/apikeys/v1/apikeys_pb.js";
import { startServer } from "../children.js";
import { openDataset, sizeLabel } from "../dataset.js";
import { runLoad } from "../load.js";
import { ReplicatedMariadb } from "../mariadb-pair.js";
import { type Bench, PEPPER, VERIFY_PATH, client, expectVerify, serviceEnv, spec, verifyFrame, wrongAnswers } from "./harness.js";

/** Keys in the replica row's dataset, each verified once per service (cold: nothing cached yet). */
const REPLICA_KEYS = 20_000;
/** Calls in flight: a latency comparison, not a throughput one (the cold rows measure throughput). */
const IN_FLIGHT = 4;

/**
 * 3b. Cold VerifyKey from a read replica (MYSQL_REPLICA_URL) against the same from the primary: a private
 * MariaDB primary and replica (bench/mariadb-pair.ts), the same dataset, two services with their cache on
 * (a replica is only read with a cache: its generation fences the reads), each sending every key once.
 */
export async function replica(b: Bench): Promise<void> {
  const dbs = await ReplicatedMariadb.start();
  try {
    const size = Math.min(REPLICA_KEYS, Math.max(...b.settings.coldSizes));
    const dataset = await openDataset(dbs.primary.url(), size, PEPPER, b.log);
    const replicaUrl = dataset.url.replace(dbs.primary.url(), dbs.replica.url());
    try {
      await dbs.caughtUp(120);
      const secrets = await dataset.secrets(size);
      const half = Math.floor(secrets.length / 2);
      const run = async (extra: Record<string, string>, keys: string[]) => {
        const child = await startServer("service", { env: serviceEnv(b, dataset.url, { CACHE_MAX_ENTRIES: String(size * 2), ...extra }) });
        try {
          await expectVerify(client(child), keys[0], VerifyCode.VALID);
          const executed = await statementsExecuted(dbs);
          const result = await runLoad("node", {
            ...spec(b, child.target, VERIFY_PATH, keys.slice(1).map((k) => verifyFrame(k)), { expectCode: VerifyCode.VALID }),
            inFlight: IN_FLIGHT,
            once: true,
          });
          const after = await statementsExecuted(dbs);
          return { result, replicaStatements: after - executed };
        } finally {
          await child.stop();
        }
      };
      // Each service its own half of the keys, in alternating order, so neither reads pages the other warmed.
      const primary = await run({}, secrets.slice(0, half));
      const fromReplica = await run({ MYSQL_REPLICA_URL: replicaUrl }, secrets.slice(half));
      const wrong =
        wrongAnswers([primary.result, fromReplica.result], null) ??
        (fromReplica.replicaStatements < fromReplica.result.requests ? `only ${fromReplica.replicaStatements} statements on the replica for ${fromReplica.result.requests} calls` : null);
      const ratio = fromReplica.result.p99Ms / primary.result.p99Ms;
      b.row({
        scenario: `3b. cold VerifyKey from a replica, ${sizeLabel(size)} keys`,
        rps: fromReplica.result.rps,
        p50Ms: fromReplica.result.p50Ms,
        p99Ms: fromReplica.result.p99Ms,
        target: "p99 ≤ 1.2× primary",
        verdict: !wrong && ratio <= 1.2 ? "PASS" : "FAIL",
        notes:
          wrong ??
          `p99 ${ratio.toFixed(2)}× the same from the primary (p50/p99 ${primary.result.p50Ms.toFixed(2)}/${primary.result.p99Ms.toFixed(2)} ms at ${primary.result.rps.toFixed(0)} req/s); ` +
            `each key once, ${IN_FLIGHT} in flight, cache on; ${fromReplica.replicaStatements} statements executed on the replica; private mariadbd pair, 32 MB buffer pools`,
      });
    } finally {
      await dataset.close();
    }
  } finally {
    await dbs.stop();
  }
}

/** Prepared statements the replica has executed (VerifyKey's lookups are prepared). */
async function statementsExecuted(dbs: ReplicatedMariadb): Promise<number> {
  const [row] = await dbs.replica.query("SHOW GLOBAL STATUS LIKE 'Com_stmt_execute'");
  return Number(row.Value);
}
