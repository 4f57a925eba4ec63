import { toBinary } from "@bufbuild/protobuf";
import mysql from "mysql2/promise";
import { VerifyCode, VerifyKeyResponseSchema } from "../../gen/apikeys/v1/apikeys_pb.js";
import { startServer } from "../children.js";
import {
  type Bench,
  type MainService,
  VERIFY_PATH,
  client,
  cpuNote,
  expectVerify,
  inTurns,
  serviceEnv,
  spec,
  sumRps,
  verifyFrame,
  wrongAnswers,
} from "./harness.js";

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
