// Profile the cold path: service with CACHE_MAX_ENTRIES=0 against the 100k dataset.
import { create, toBinary } from "@bufbuild/protobuf";
import { mkdtemp, readdir, readFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { VerifyKeyRequestSchema } from "../gen/apikeys/v1/apikeys_pb.js";
import { buildBench, startServer } from "../bench/children.js";
import { openDataset, DATASET_SCOPES } from "../bench/dataset.js";
import { grpcFrame, runLoad } from "../bench/load.js";
import { topSelfTime } from "../bench/profile.js";

const PEPPER = "apikeys-bench-pepper-not-a-secret";
const TOKEN = "apikeys-bench-caller-token";
const prof = process.argv[2] === "prof";
buildBench();
const dataset = await openDataset("mysql://root@127.0.0.1:3306/", 100_000, PEPPER, console.log);
const dir = await mkdtemp(join(tmpdir(), "coldprof-"));
const child = await startServer("service", {
  env: {
    KEY_PEPPER: PEPPER,
    CALLERS: JSON.stringify([{ name: "bench", token: TOKEN, allow: ["manage", "verify"] }]),
    HOST: "127.0.0.1", GRPC_PORT: "0", HTTP_PORT: "0",
    MYSQL_URL: dataset.url, REDIS_URL: "redis://127.0.0.1:6379", LOG_LEVEL: "warn", CACHE_MAX_ENTRIES: "0",
  },
  ...(prof ? { cpuProfileDir: dir } : {}),
});
const secrets = await dataset.secrets(50_000);
const frames = secrets.map((key) => grpcFrame(toBinary(VerifyKeyRequestSchema, create(VerifyKeyRequestSchema, { key, requiredScopes: DATASET_SCOPES }))));
const spec = { target: child.target, path: "/apikeys.v1.ApiKeyService/VerifyKey", token: TOKEN, frames, connections: 4, durationS: 10, warmupS: 2, rate: 0, expectCode: 1 };
for (const inFlight of [64, 4, 4]) {
  const r = await runLoad("node", { ...spec, inFlight });
  console.log(inFlight, Math.round(r.rps), r.p50Ms.toFixed(2), r.p99Ms.toFixed(2), r.failed);
}
const stats = await child.stats();
console.log("findByHash", JSON.stringify(stats.storeLatency.findByHash));
await child.stop();
await dataset.close();
if (prof) {
  const file = (await readdir(dir)).find((f) => f.endsWith(".cpuprofile"))!;
  console.log(join(dir, file));
  for (const l of await topSelfTime(join(dir, file), 35, process.cwd())) console.log(l);
}
