// Ad hoc, not a bench row yet: cached VerifyKey as unary grpc-js calls against
// the same verifications through the SDK (one VerifyKeyStream), client and
// service in this one process (dev mode: memory store, no Redis), in turns.
// The ratio is of verifications per second of the whole process.
//
//   npx tsx bench/stream-ratio.ts [seconds per turn, default 3]
import * as grpc from "@grpc/grpc-js";
import { create } from "@bufbuild/protobuf";
import { ApiKeyService, CreateKeyRequestSchema, Role, VerifyKeyRequestSchema } from "../gen/apikeys/v1/apikeys_pb.js";
import { buildApp } from "../src/app.js";
import { loadConfig } from "../src/config.js";
import { VerifierClient } from "../src/sdk/index.js";
import { serviceDefinition } from "../src/transport/grpc-server.js";

const seconds = Number(process.argv[2] ?? 3);
const CONCURRENCY = 64;

const config = loadConfig({ GRPC_PORT: "0", HTTP_PORT: "0", LOG_LEVEL: "silent" }, { dev: true });
const app = await buildApp(config);
const { grpcPort } = await app.start();
const { secret } = await app.keys.createKey(
  create(CreateKeyRequestSchema, { organizationId: "org_bench", actor: { userId: "u", role: Role.OWNER }, name: "bench" }),
  { caller: "bench", organizations: null },
);
const address = `127.0.0.1:${grpcPort}`;

async function drive(call: () => Promise<unknown>): Promise<number> {
  let done = 0;
  const until = performance.now() + seconds * 1000;
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      while (performance.now() < until) {
        await call();
        done++;
      }
    }),
  );
  return done / seconds;
}

const sdk = new VerifierClient({ address, maxInFlight: 10_000 });
const Client = grpc.makeGenericClientConstructor({}, "x");
const plain = new Client(address, grpc.credentials.createInsecure());
const def = serviceDefinition(ApiKeyService).verifyKey;
const req = create(VerifyKeyRequestSchema, { key: secret });
const unary = () =>
  new Promise((resolve, reject) =>
    plain.makeUnaryRequest(def.path, def.requestSerialize, def.responseDeserialize, req, new grpc.Metadata(), (err, res) => (err ? reject(err) : resolve(res))),
  );
const streamed = () => sdk.verify(secret);

await drive(unary);
await drive(streamed);
const turns: [number, number][] = [];
for (let i = 0; i < 2; i++) turns.push([await drive(unary), await drive(streamed)]);
const u = turns.reduce((a, t) => a + t[0], 0);
const s = turns.reduce((a, t) => a + t[1], 0);
console.log(`unary ${Math.round(u / turns.length)}/s, stream (SDK) ${Math.round(s / turns.length)}/s: ${(s / u).toFixed(2)}× (turns: ${turns.map((t) => (t[1] / t[0]).toFixed(2)).join(", ")}), streamed ${sdk.stats.streamed}, unary fallbacks ${sdk.stats.unary}`);
sdk.close();
plain.close();
await app.stop();
process.exit(0);
