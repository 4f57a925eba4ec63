import { describe, expect, it } from "vitest";
import { type Pause, recordGcPauses, slowestDuringPauses } from "../../bench/pauses.js";

const ms = (n: number) => String(BigInt(Math.round(n * 1e6)));
const pause = (from: number, to: number): Pause => [ms(from), ms(to)];

describe("slowestDuringPauses (bench: were the slowest calls slowed by garbage collection?)", () => {
  // Calls sent at 0, 10, 20, … ms; the ones at 10 and 30 ms are slow.
  const sent = [0, 10, 20, 30, 40].map(ms);
  const latencies = [1, 5, 1, 4, 1];

  it("counts only the slowest share, and only pauses that overlap a call", () => {
    // Overlaps the slow call at 10–15 ms, and the fast one at 0–1 ms, which is not among the slowest two.
    expect(slowestDuringPauses(sent, latencies, [pause(0.5, 0.8), pause(14, 16)], 0.4)).toEqual({ slowest: 2, duringGc: 1 });
    expect(slowestDuringPauses(sent, latencies, [pause(12, 13), pause(31, 32)], 0.4)).toEqual({ slowest: 2, duringGc: 2 });
  });

  it("does not count a pause that ends before a call starts or starts after it ends", () => {
    expect(slowestDuringPauses(sent, latencies, [pause(9, 10), pause(15, 16), pause(34, 35)], 0.4)).toEqual({ slowest: 2, duringGc: 0 });
  });

  it("looks at one call at least", () => {
    expect(slowestDuringPauses(sent, latencies, [], 0.01)).toEqual({ slowest: 1, duringGc: 0 });
  });
});

describe("recordGcPauses", () => {
  it("records this process's collections on the shared clock, and hands each out once", async () => {
    const take = recordGcPauses();
    const before = process.hrtime.bigint();
    // Enough short-lived garbage for several young-generation collections.
    let kept = 0;
    for (let i = 0; i < 2_000_000; i++) kept += { i, s: `x${i}` }.s.length;
    expect(kept).toBeGreaterThan(0);
    await new Promise((resolve) => setTimeout(resolve, 50)); // observers are told asynchronously
    const after = process.hrtime.bigint();
    const pauses = take();
    expect(pauses.length).toBeGreaterThan(0);
    for (const [start, end] of pauses) {
      expect(BigInt(start)).toBeGreaterThanOrEqual(before - 1_000_000n);
      expect(BigInt(end)).toBeGreaterThanOrEqual(BigInt(start));
      expect(BigInt(end)).toBeLessThanOrEqual(after);
    }
    expect(take()).toEqual([]);
  });
});
