// Reads a V8 CPU profile (node --cpu-prof) and lists the functions with the
// most self time: where the process itself spent its CPU, not its callees.
import { readFile } from "node:fs/promises";
import { relative } from "node:path";

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
}

interface CpuProfile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

/** The `count` functions with the most self time, as "share  name  where" lines (idle time left out). */
export async function topSelfTime(file: string, count: number, root: string): Promise<string[]> {
  const profile = JSON.parse(await readFile(file, "utf8")) as CpuProfile;
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const selfMicros = new Map<string, number>();
  let total = 0;
  for (let i = 0; i < profile.samples.length; i++) {
    const frame = byId.get(profile.samples[i])!.callFrame;
    if (frame.functionName === "(idle)") continue;
    const where = frame.url === "" ? "" : `${relative(root, frame.url.replace(/^file:\/\//, ""))}:${frame.lineNumber + 1}`;
    const name = `${frame.functionName || "(anonymous)"}  ${where}`;
    const micros = profile.timeDeltas[i] ?? 0;
    selfMicros.set(name, (selfMicros.get(name) ?? 0) + micros);
    total += micros;
  }
  return [...selfMicros.entries()]
    .sort((a, b) => b[1] - a[1])
    .slice(0, count)
    .map(([name, micros]) => `${((100 * micros) / total).toFixed(1).padStart(5)}%  ${name}`);
}
