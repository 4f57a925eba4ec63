import { VerifyCode } from "../../gen/apikeys/v1/apikeys_pb.js";
import { startServer } from "../children.js";
import { ensureBufferPool, openDataset, sizeLabel } from "../dataset.js";
import { runLoad } from "../load.js";
import {
  type Bench,
  PEPPER,
  VERIFY_PATH,
  client,
  expectVerify,
  halfLoadInFlight,
  halfNote,
  ratioTo,
  serviceEnv,
  spec,
  verifyFrame,
  wrongAnswers,
} from "./harness.js";

/** 3. Cold lookups (cache off): every call reads MySQL, over datasets of growing size, with a buffer pool sized for the largest. */
export async function cold(b: Bench): Promise<void> {
  const pool = await ensureBufferPool(b.mysqlServerUrl, Math.max(...b.settings.coldSizes), b.log);
  try {
    await coldRuns(b, pool === null ? "" : `; InnoDB buffer pool ${pool.bytes >> 20} MB for this run (was ${pool.previousBytes >> 20} MB; docs/operating.md: Sizing)`);
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
