import { readFile } from "node:fs/promises";
import { create, toBinary } from "@bufbuild/protobuf";
import mysql from "mysql2/promise";
import type { RowDataPacket } from "mysql2/promise";
import { CreateKeyRequestSchema, CreateKeyResponseSchema, Role } from "../../gen/apikeys/v1/apikeys_pb.js";
import { DATASET_SCOPES } from "../dataset.js";
import { type LoadResult, grpcFrame, runLoad } from "../load.js";
import { type RawResult, rawInserts } from "../raw-insert.js";
import { type Bench, CREATE_CONCURRENCY, type MainService, PEPPER, spec, sumRps, wrongAnswers } from "./harness.js";

const CREATE_PATH = "/apikeys.v1.ApiKeyService/CreateKey";

const CREATORS = 256;

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
        `the lookup row, then 5 INSERTs in a transaction; p50/p99 of the second run at ${shape}; CPU per transaction: the writer ` +
        `${perCall(used.raw, rawCalls)}, MySQL ${perCall(used.rawMysql, rawCalls)}`,
    });
  } finally {
    await pool.end();
  }
}

/** Transactions the server has committed so far (all sessions). */
async function commits(pool: mysql.Pool): Promise<number> {
  const [rows] = await pool.query<RowDataPacket[]>("SHOW GLOBAL STATUS LIKE 'Com_commit'");
  return Number(rows[0].Value);
}

/** CPU time the database server process used so far, µs; null when it is not a local process whose /proc we can read. */
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
