// Profiles the service (cached key) and the no-op baseline under the same h2load load; µs per call by function.
import { create, toBinary } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { mkdtemp, readdir, readFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { ApiKeyService, Role, VerifyKeyRequestSchema, VerifyKeyResponseSchema } from "../gen/apikeys/v1/apikeys_pb.js";
import { buildBench, startServer } from "../bench/children.js";
import { grpcFrame, runLoad } from "../bench/load.js";

const PEPPER = "apikeys-bench-pepper-not-a-secret";
const TOKEN = "apikeys-bench-caller-token";
const env = (extra: Record<string, string>) => ({
  KEY_PEPPER: PEPPER, CALLERS: JSON.stringify([{ name: "bench", token: TOKEN, allow: ["manage", "verify"] }]),
  HOST: "127.0.0.1", GRPC_PORT: "0", HTTP_PORT: "0", REDIS_URL: "redis://127.0.0.1:6379", LOG_LEVEL: "warn", ...extra,
});
buildBench();
const dirS = await mkdtemp(join(tmpdir(), "prof-s-"));
const dirB = await mkdtemp(join(tmpdir(), "prof-b-"));
const service = await startServer("service", { env: env({ MYSQL_URL: "mysql://root@127.0.0.1:3306/apikeys_exp_prof" }), cpuProfileDir: dirS });
const c = createClient(ApiKeyService, createGrpcTransport({ baseUrl: `http://${service.target}`, interceptors: [(next) => (req) => { req.header.set("authorization", `Bearer ${TOKEN}`); return next(req); }] }));
const k = await c.createKey({ organizationId: "org_p", actor: { userId: "u", role: Role.OWNER }, name: "p", scopes: ["documents:read"] });
const answer = await c.verifyKey({ key: k.secret, requiredScopes: ["documents:read"] });
const base = await startServer("service", { env: env({ MYSQL_URL: "mysql://root@127.0.0.1:3306/apikeys_exp_prof" }), cpuProfileDir: dirB });
const bad = k.secret.slice(0, -1) + (k.secret.endsWith("A") ? "B" : "A");
const frame = grpcFrame(toBinary(VerifyKeyRequestSchema, create(VerifyKeyRequestSchema, { key: k.secret, requiredScopes: ["documents:read"] })));
const badFrame = grpcFrame(toBinary(VerifyKeyRequestSchema, create(VerifyKeyRequestSchema, { key: process.argv[2] === "unknown" ? "sk_" + "x".repeat(38) : bad, requiredScopes: ["documents:read"] })));
const spec = (target: string) => ({ target, path: "/apikeys.v1.ApiKeyService/VerifyKey", token: TOKEN, frames: [target === service.target ? badFrame : frame], connections: 4, inFlight: 64, durationS: 15, warmupS: 3, rate: 0 });
const counts: Record<string, number> = { s: 0, b: 0 };
for (const round of [1, 2]) {
  for (const [name, child] of [["s", service], ["b", base]] as const) {
    const r = await runLoad("h2load", spec(child.target));
    console.log(round, name, Math.round(r.rps));
  }
}
const sum = (a: number[]) => a.reduce((x, y) => x + y, 0);
counts.s = sum((await service.stats()).verified); counts.b = sum((await base.stats()).verified);
await service.stop(); await base.stop();
async function perCall(dir: string, calls: number) {
  const file = join(dir, (await readdir(dir)).find((f) => f.endsWith(".cpuprofile"))!);
  const p = JSON.parse(await readFile(file, "utf8"));
  const byId = new Map(p.nodes.map((n: any) => [n.id, n]));
  const m = new Map<string, number>();
  let total = 0;
  for (let i = 0; i < p.samples.length; i++) {
    const f = (byId.get(p.samples[i]) as any).callFrame;
    if (f.functionName === "(idle)") continue;
    const name = `${f.functionName || "(anon)"} ${f.url ? relative(process.cwd(), f.url.replace("file://", "")) + ":" + (f.lineNumber + 1) : ""}`;
    m.set(name, (m.get(name) ?? 0) + p.timeDeltas[i]);
    total += p.timeDeltas[i];
  }
  return { m, total: total / calls, calls };
}
const S = await perCall(dirS, counts.s);
const B = await perCall(dirB, counts.b);
console.log(`calls s=${counts.s} b=${counts.b}; µs/call s=${S.total.toFixed(1)} b=${B.total.toFixed(1)}`);
const names = new Set([...S.m.keys(), ...B.m.keys()]);
const rows = [...names].map((n) => ({ n, s: (S.m.get(n) ?? 0) / S.calls, b: (B.m.get(n) ?? 0) / B.calls })).map((r) => ({ ...r, d: r.s - r.b }));
rows.sort((x, y) => y.d - x.d);
for (const r of rows.slice(0, 30)) console.log(`${r.d.toFixed(2).padStart(7)} ${r.s.toFixed(2).padStart(7)} ${r.b.toFixed(2).padStart(7)}  ${r.n}`);
console.log("--- most negative");
for (const r of rows.slice(-8)) console.log(`${r.d.toFixed(2).padStart(7)} ${r.s.toFixed(2).padStart(7)} ${r.b.toFixed(2).padStart(7)}  ${r.n}`);
