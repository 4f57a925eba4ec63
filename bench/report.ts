// The results table (one renderer for the terminal and the markdown file) and
// the files a run leaves: bench/results/<date>.json and <date>.md.
import { cpus, totalmem } from "node:os";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";

export type Verdict = "PASS" | "FAIL" | "info" | "skipped" | "ERROR";

export interface Row {
  scenario: string;
  /** Requests per second (absolute: this machine's). */
  rps?: number;
  /** Throughput over the baseline it is compared with. */
  ratio?: number;
  p50Ms?: number;
  p99Ms?: number;
  target: string;
  verdict: Verdict;
  notes: string;
}

export interface Machine {
  cpu: string;
  cores: number;
  memoryGb: number;
  node: string;
  database: string;
  loadTool: string;
}

export interface Results {
  date: string;
  command: string;
  machine: Machine;
  rows: Row[];
  /** Top self-time functions of the profiled server (--profile). */
  profile?: string[];
}

export function machine(database: string, loadTool: string): Machine {
  const list = cpus();
  return {
    cpu: list[0]?.model.trim() ?? "unknown",
    cores: list.length,
    memoryGb: Math.round(totalmem() / 2 ** 30),
    node: process.version,
    database,
    loadTool,
  };
}

function num(n: number | undefined, digits: number): string {
  return n === undefined || Number.isNaN(n) ? "—" : n.toFixed(digits);
}

/** A padded markdown table: readable in a terminal and rendered on GitHub. */
export function renderTable(rows: Row[]): string {
  const header = ["scenario", "req/s", "× baseline", "p50 ms", "p99 ms", "target", "result", "notes"];
  const cells = rows.map((r) => [
    r.scenario,
    r.rps === undefined ? "—" : Math.round(r.rps).toString(),
    r.ratio === undefined ? "—" : `${r.ratio.toFixed(2)}×`,
    num(r.p50Ms, 2),
    num(r.p99Ms, 2),
    r.target,
    r.verdict,
    r.notes,
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i].length)));
  const line = (c: string[]) => `| ${c.map((v, i) => v.padEnd(widths[i])).join(" | ")} |`;
  return [line(header), `|${widths.map((w) => "-".repeat(w + 2)).join("|")}|`, ...cells.map(line)].join("\n");
}

export function describeMachine(m: Machine): string {
  return `${m.cpu}, ${m.cores} cores, ${m.memoryGb} GB; Node ${m.node}; ${m.database}; load from ${m.loadTool}`;
}

export function markdown(results: Results): string {
  const lines = [
    `# apikeys bench, ${results.date}`,
    "",
    `\`${results.command}\``,
    "",
    `Absolute numbers are this machine's (${describeMachine(results.machine)}), which is shared and noisy;`,
    "the ratios to the no-op baseline measured in the same run are what carries over.",
    "",
    renderTable(results.rows),
  ];
  if (results.profile) lines.push("", "Top self time of the service under the cached scenario (`--profile`):", "", "```", ...results.profile, "```");
  return `${lines.join("\n")}\n`;
}

/** A run's files are named after its date, without the colons some file systems refuse. */
export function fileStem(date: string): string {
  return date.replaceAll(":", "-");
}

/** Writes <dir>/<date>.json and <dir>/<date>.md; returns their paths. */
export async function writeResults(dir: string, results: Results): Promise<string[]> {
  await mkdir(dir, { recursive: true });
  const base = join(dir, fileStem(results.date));
  await writeFile(`${base}.json`, `${JSON.stringify(results, null, 2)}\n`);
  await writeFile(`${base}.md`, markdown(results));
  return [`${base}.json`, `${base}.md`];
}
