// Garbage-collection pauses of a bench process, on the clock every process
// shares, so that slow calls can be checked against them.
import { PerformanceObserver, performance } from "node:perf_hooks";

/** [start, end] of one pause: process.hrtime.bigint() (ns, CLOCK_MONOTONIC, every process's), as text. */
export type Pause = [string, string];

/** Starts recording this process's GC pauses; the function returned takes those recorded since its last call. */
export function recordGcPauses(): () => Pause[] {
  // performance.now() and process.hrtime run on the same monotonic clock, from different origins.
  const offsetNs = process.hrtime.bigint() - BigInt(Math.round(performance.now() * 1e6));
  let pauses: Pause[] = [];
  new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) {
      const start = offsetNs + BigInt(Math.round(entry.startTime * 1e6));
      pauses.push([String(start), String(start + BigInt(Math.round(entry.duration * 1e6)))]);
    }
  }).observe({ entryTypes: ["gc"] });
  return () => {
    const taken = pauses;
    pauses = [];
    return taken;
  };
}

/**
 * Of the slowest `share` of calls (each sent at `sent[i]`, hrtime ns as text, taking `latencies[i]` ms), how
 * many overlapped one of the pauses, and how many calls that is.
 */
export function slowestDuringPauses(sent: string[], latencies: number[], pauses: Pause[], share = 0.01): { slowest: number; duringGc: number } {
  const spans = pauses.map(([start, end]) => [BigInt(start), BigInt(end)] as const);
  const order = latencies.map((_, i) => i).sort((a, b) => latencies[b] - latencies[a]);
  const slowest = order.slice(0, Math.max(1, Math.round(latencies.length * share)));
  let duringGc = 0;
  for (const i of slowest) {
    const from = BigInt(sent[i]);
    const to = from + BigInt(Math.round(latencies[i] * 1e6));
    if (spans.some(([start, end]) => start < to && end > from)) duringGc++;
  }
  return { slowest: slowest.length, duringGc };
}
