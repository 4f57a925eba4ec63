// `npm run bench`: the benchmark suite of issue 8. Prints a table of every
// scenario's throughput as a ratio to a no-op baseline measured in the same
// run, with PASS/FAIL against the targets, and writes it to
// bench/results/<date>.json and .md. A missed target does not fail the run
// (the numbers are for people to read); a scenario that cannot run does.
//
//   npm run bench                  the full suite (datasets up to 1M keys, 10 s per run)
//   npm run bench -- --quick       10k keys at most, 3 s per run
//   npm run bench -- --smoke       seconds in all: what `npm test` runs so the bench cannot rot
//   --only cached,negative         scenarios (bench/scenarios/index.ts): cached, workers, limits, limits-cluster, cold, replica, negative,
//                                  create, revoke, revoke-cluster, revoke-stalled, revoke-many, memory
//   --tool node                    load from the Node load generator even where h2load is installed
//   --profile                      also profile the service under the cached load (node --cpu-prof)
//   --out DIR                      where results go (default bench/results)
//   --mysql URL                    the MySQL/MariaDB server (default mysql://root@127.0.0.1:3306)
import { randomBytes } from "node:crypto";
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import mysql from "mysql2/promise";
import type { RowDataPacket } from "mysql2/promise";
import { TestRedis } from "../test/helpers/redis.js";
import { buildBench } from "./children.js";
import { ensureH2load } from "./h2load.js";
import type { Tool } from "./load.js";
import { type Results, type Row, describeMachine, fileStem, machine, renderTable, writeResults } from "./report.js";
import { type Bench, type MainService, SCENARIOS, type ScenarioName, type Settings, baseline, profileCached, startMainService } from "./scenarios/index.js";

const ROOT = fileURLToPath(new URL("..", import.meta.url));

const MODES: Record<"full" | "quick" | "smoke", Settings> = {
  full: { durationS: 10, warmupS: 2, coldSizes: [10_000, 100_000, 1_000_000], coldSample: 50_000, memoryKeys: 100_000, revocations: 1000, revokeWarmup: 5000, soakS: 45, revokeTopologies: true },
  quick: { durationS: 3, warmupS: 1, coldSizes: [10_000], coldSample: 10_000, memoryKeys: 10_000, revocations: 200, revokeWarmup: 1000, soakS: 10, revokeTopologies: true },
  smoke: { durationS: 0.5, warmupS: 0, coldSizes: [1000], coldSample: 1000, memoryKeys: 1000, revocations: 20, revokeWarmup: 20, soakS: 0, revokeTopologies: false },
};

const NAMES = Object.keys(SCENARIOS) as ScenarioName[];

function parseOptions() {
  const { values } = parseArgs({
    options: {
      quick: { type: "boolean", default: false },
      smoke: { type: "boolean", default: false },
      only: { type: "string" },
      tool: { type: "string" },
      profile: { type: "boolean", default: false },
      out: { type: "string", default: join(ROOT, "bench", "results") },
      mysql: { type: "string", default: "mysql://root@127.0.0.1:3306" },
    },
  });
  const mode: keyof typeof MODES = values.smoke ? "smoke" : values.quick ? "quick" : "full";
  const only = values.only?.split(",").map((s) => s.trim()) ?? NAMES;
  const unknown = only.filter((s) => !Object.hasOwn(SCENARIOS, s));
  if (unknown.length > 0) throw new Error(`unknown scenario ${unknown.join(", ")} (known: ${NAMES.join(", ")})`);
  if (values.tool !== undefined && values.tool !== "h2load" && values.tool !== "node") throw new Error("--tool is h2load or node");
  return { mode, only: new Set(only as ScenarioName[]), tool: values.tool as Tool | undefined, profile: values.profile, out: values.out, mysql: values.mysql };
}

/** h2load where it is (or can be) installed; a smoke run installs nothing. */
function chooseTool(requested: Tool | undefined, mayInstall: boolean, log: (line: string) => void): Tool {
  if (requested === "node") return "node";
  if (ensureH2load(mayInstall)) return "h2load";
  if (requested === "h2load") throw new Error("h2load is not installed and could not be installed (Debian: apt-get install nghttp2-client)");
  log("h2load is not available: the Node load generator drives every scenario, and it is no faster than the server,");
  log("so ratios near 1 for in-memory scenarios may only say that the server kept up with it.");
  return "node";
}

async function dropDatabase(serverUrl: string, name: string): Promise<void> {
  const conn = await mysql.createConnection(serverUrl);
  try {
    await conn.query(`DROP DATABASE IF EXISTS \`${name}\``);
  } finally {
    await conn.end();
  }
}

async function databaseVersion(serverUrl: string): Promise<string> {
  const conn = await mysql.createConnection(serverUrl);
  try {
    const [rows] = await conn.query<RowDataPacket[]>("SELECT VERSION() AS v");
    return `MySQL/MariaDB ${rows[0].v}`;
  } finally {
    await conn.end();
  }
}

async function main(): Promise<number> {
  const options = parseOptions();
  const log = (line: string) => process.stderr.write(`${line}\n`);
  const settings = MODES[options.mode];
  const tool = chooseTool(options.tool, options.mode !== "smoke", log);
  log(`building the service and the bench (${options.mode} mode, load from ${tool})…`);
  buildBench();
  const date = new Date().toISOString().slice(0, 19) + "Z";
  const rows: Row[] = [];
  // Per run (the service creates it): two runs at once must not count each other's keys.
  const scratch = `apikeys_bench_scratch_${randomBytes(4).toString("hex")}`;
  // A redis-server of the bench's own: other people's tests on the shared Redis would otherwise
  // receive (and acknowledge) this run's invalidations, and theirs would reach the bench's instances.
  const redis = await TestRedis.start();
  const b: Bench = {
    settings,
    tool,
    mysqlServerUrl: options.mysql,
    redisUrl: redis.url,
    scratchUrl: `${options.mysql.replace(/\/+$/, "")}/${scratch}`,
    baseline: {},
    log,
    row: (row) => {
      rows.push(row);
      log(`  ${row.scenario}: ${row.verdict}${row.rps === undefined ? "" : `, ${Math.round(row.rps)} req/s`}${row.notes ? ` (${row.notes})` : ""}`);
    },
  };
  let errors = 0;
  let profile: string[] | undefined;
  let service: MainService | null = null;
  try {
    service = await startMainService(b);
    log("no-op baseline…");
    await baseline(b, service);
    for (const name of NAMES) {
      if (!options.only.has(name)) continue;
      log(`${name}…`);
      try {
        await SCENARIOS[name](b, service);
      } catch (err) {
        errors++;
        b.row({ scenario: name, target: "—", verdict: "ERROR", notes: err instanceof Error ? err.message : String(err) });
      }
    }
    if (options.profile) {
      log("profiling the cached scenario…");
      await mkdir(options.out, { recursive: true });
      profile = await profileCached(b, service, join(options.out, `${fileStem(date)}.cpuprofile`), ROOT);
    }
  } finally {
    await service?.child.stop();
    await b.baselineChild?.stop();
    await redis.kill();
    await dropDatabase(options.mysql, scratch);
  }

  const results: Results = {
    date,
    command: `npm run bench${process.argv.length > 2 ? ` -- ${process.argv.slice(2).join(" ")}` : ""}`,
    machine: machine(await databaseVersion(options.mysql), tool === "h2load" ? "h2load (nghttp2)" : "the Node load generator"),
    rows,
    profile,
  };
  const files = await writeResults(options.out, results);
  process.stdout.write(`\nMeasured on this machine: ${describeMachine(results.machine)}. Absolute numbers are this machine's;\n`);
  process.stdout.write("ratios are to the no-op baseline of this run. p50/p99 are at half the row's max throughput unless noted.\n\n");
  process.stdout.write(`${renderTable(rows)}\n`);
  if (profile) process.stdout.write(`\n${profile.join("\n")}\n`);
  process.stdout.write(`\nwritten: ${files.join(", ")}\n`);
  return errors === 0 ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`bench: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  },
);
