// `npm run bench` in its smallest mode, so the bench cannot rot: every
// scenario runs end to end (servers in child processes, real MariaDB and
// Redis, h2load or else the Node load generator) and reports a row with sane
// numbers. Targets are not asserted: a second of load on a shared machine
// says nothing about speed.
import { spawn } from "node:child_process";
import { mkdtemp, readFile, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, describe, expect, it } from "vitest";
import type { Results } from "../../bench/report.js";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));

function runBench(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--import", "tsx", "bench/run.ts", ...args], { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
    child.once("error", reject);
    child.once("exit", (code) => resolve({ code, stdout, stderr }));
  });
}

describe("bench smoke run", () => {
  let out = "";
  afterAll(async () => {
    if (out) await rm(out, { recursive: true, force: true });
  });

  it("runs every scenario and prints the table", { timeout: 240_000 }, async () => {
    out = await mkdtemp(join(tmpdir(), "apikeys-bench-smoke-"));
    const { code, stdout, stderr } = await runBench(["--smoke", "--out", out]);
    expect(code, stderr).toBe(0);

    const files = await readdir(out);
    expect(files.filter((f) => f.endsWith(".md"))).toHaveLength(1);
    const json = files.find((f) => f.endsWith(".json"));
    const results = JSON.parse(await readFile(join(out, json!), "utf8")) as Results;

    const names = results.rows.map((r) => r.scenario);
    expect(names).toContain("no-op baseline (Node load generator)");
    for (const n of ["1.", "2.", "3.", "4.", "5.", "6.", "7."]) expect(names.some((s) => s.startsWith(n)), `scenario ${n}`).toBe(true);
    for (const row of results.rows) {
      expect(row.verdict, `${row.scenario}: ${row.notes}`).not.toBe("ERROR");
      if (row.verdict === "skipped") continue;
      if (row.rps !== undefined) expect(row.rps, row.scenario).toBeGreaterThan(0);
      if (row.p99Ms !== undefined) expect(row.p99Ms, row.scenario).toBeGreaterThan(0);
      // The table on stdout holds the same rows.
      expect(stdout).toContain(`| ${row.scenario} `);
    }
    // In-memory rows say how their ratio was measured: each pair's ratio, and CPU per call of both servers.
    const cached = results.rows.find((r) => r.scenario === "1. cached VerifyKey (valid key)");
    expect(cached?.notes).toMatch(/pairs of runs: \d+\.\d\d×, \d+\.\d\d×; CPU per call: the service \d+\.\d µs, the baseline \d+\.\d µs/);
    // Every revocation was seen by all three instances, measured after its warm-up.
    const revoked = results.rows.find((r) => r.scenario === "6. RevokeKey → rejected on all 3 instances");
    expect(revoked?.notes).toMatch(/after (\d+) revocations to warm up; \1\/\1 REVOKED on every instance right after; each published to 3 instances/);
    // The slowest revocations are checked against the GC pauses of the client and the instances.
    const inGc = /of the (\d+) slowest, (\d+) overlapped a GC pause in the client or an instance/.exec(revoked?.notes ?? "");
    expect(inGc, revoked?.notes).not.toBeNull();
    expect(Number(inGc![2])).toBeLessThanOrEqual(Number(inGc![1]));
    // …and reached the other two before RevokeKey returned.
    const reached = results.rows.find((r) => r.scenario === "6. RevokeKey sent → evicted on the other 2");
    expect(reached?.verdict, reached?.notes).toBe("info");
    expect(reached!.p50Ms!).toBeLessThan(revoked!.p50Ms!);
    expect(stdout).toMatch(/\| scenario +\| req\/s +\| × baseline +\| p50 ms +\| p99 ms +\| target +\| result +\| notes +\|/);
  });
});
