// Per-thread CPU of the service and the baseline under the same h2load load.
import { create, toBinary } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { execSync } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { ApiKeyService, Role, VerifyKeyRequestSchema, VerifyKeyResponseSchema } from "../gen/apikeys/v1/apikeys_pb.js";
import { buildBench, startServer } from "../bench/children.js";
import { grpcFrame, runLoad } from "../bench/load.js";

const TOKEN = "apikeys-bench-caller-token";
const env = (extra: Record<string, string>) => ({
  KEY_PEPPER: "apikeys-bench-pepper-not-a-secret", CALLERS: JSON.stringify([{ name: "bench", token: TOKEN, allow: ["manage", "verify"] }]),
  HOST: "127.0.0.1", GRPC_PORT: "0", HTTP_PORT: "0", REDIS_URL: "redis://127.0.0.1:6379", LOG_LEVEL: "warn", ...extra,
});
buildBench();
const extraEnv = JSON.parse(process.argv[2] ?? "{}");
const service = await startServer("service", { env: env({ MYSQL_URL: "mysql://root@127.0.0.1:3306/apikeys_exp_prof", ...extraEnv }) });
const c = createClient(ApiKeyService, createGrpcTransport({ baseUrl: `http://${service.target}`, interceptors: [(next) => (req) => { req.header.set("authorization", `Bearer ${TOKEN}`); return next(req); }] }));
const k = await c.createKey({ organizationId: "org_p", actor: { userId: "u", role: Role.OWNER }, name: "p", scopes: ["documents:read"] });
const answer = await c.verifyKey({ key: k.secret, requiredScopes: ["documents:read"] });
const base = await startServer("baseline", { env: env({ MYSQL_URL: "mysql://unused/unused", BENCH_BASELINE_RESPONSE: Buffer.from(toBinary(VerifyKeyResponseSchema, answer)).toString("base64"), ...extraEnv }) });
const frame = grpcFrame(toBinary(VerifyKeyRequestSchema, create(VerifyKeyRequestSchema, { key: k.secret, requiredScopes: ["documents:read"] })));
const pidOf = (mode: string) => Number(execSync(`pgrep -f "dist/bench/server.js ${mode}"`).toString().trim().split("\n")[0]);
const pids = { s: pidOf("service"), b: pidOf("baseline") };
function threads(pid: number): Map<string, number> {
  const m = new Map<string, number>();
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, "utf8");
    const name = stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"));
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const key = `${name}${tid === String(pid) ? " (main)" : ""}`;
    m.set(key, (m.get(key) ?? 0) + Number(f[11]) + Number(f[12]));
    m.set(`${key} sys`, (m.get(`${key} sys`) ?? 0) + Number(f[12]));
  }
  return m;
}
const spec = (target: string) => ({ target, path: "/apikeys.v1.ApiKeyService/VerifyKey", token: TOKEN, frames: [frame], connections: 4, inFlight: 64, durationS: 10, warmupS: 2, rate: 0 });
for (const round of [1, 2, 3, 4]) {
  for (const [name, child] of [["s", service], ["b", base]] as const) {
    const t0 = threads(pids[name]);
    const u0 = await child.usage();
    const r = await runLoad("h2load", spec(child.target));
    const u1 = await child.usage();
    const t1 = threads(pids[name]);
    const calls = u1.calls - u0.calls;
    const per = [...t1].map(([k, v]) => [k, ((v - (t0.get(k) ?? 0)) * 10000) / calls] as const).filter(([, v]) => v > 0.5);
    console.log(round, name, Math.round(r.rps), "rps;", ((u1.cpuMicros - u0.cpuMicros) / calls).toFixed(1), "µs/call;", per.map(([k, v]) => `${k}=${v.toFixed(1)}`).join(" "));
  }
}
await service.stop(); await base.stop();
