// Why the gRPC port is served by grpc-js rather than connect-node's HTTP/2
// server: both serve the same no-op VerifyKey through the same call pipeline
// (src/transport/pipeline.ts, caller auth included), in turns, under the same
// h2load load of gRPC requests; prints each run's req/s and the ratio.
//
//   npx tsx bench/transports.ts [seconds per run, default 10] [rounds, default 3]
//
// An ad-hoc measurement, not a bench row: docs/architecture.md reports its result.
import * as http2 from "node:http2";
import { create, toBinary } from "@bufbuild/protobuf";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { ApiKeyService, VerifyCode, VerifyKeyRequestSchema, VerifyKeyResponseSchema } from "../gen/apikeys/v1/apikeys_pb.js";
import { CallerAuth, digest } from "../src/transport/auth.js";
import type { ServiceBinding } from "../src/transport/bindings.js";
import { addBinding, createGrpcServer, listenGrpc } from "../src/transport/grpc-server.js";
import { CONNECT_CALLS } from "../src/transport/http-server.js";
import { invoker } from "../src/transport/pipeline.js";
import { ensureH2load } from "./h2load.js";
import { grpcFrame, runLoad } from "./load.js";

const TOKEN = "transports-bench-token-7Hq2Lm9Zx-0123456789";
const durationS = Number(process.argv[2] ?? 10);
const rounds = Number(process.argv[3] ?? 3);

// Frozen, as the service's shared answers are: grpc-js encodes it once.
const answer = Object.freeze(create(VerifyKeyResponseSchema, { valid: true, code: VerifyCode.VALID }));
const binding = {
  service: ApiKeyService,
  handlers: Object.fromEntries(ApiKeyService.methods.map((m) => [m.localName, () => answer])),
  access: () => "verify",
} as unknown as ServiceBinding;
const options = {
  auth: new CallerAuth([{ name: "bench", tokenSha256: digest(TOKEN), allow: ["verify"] }], false),
  onInternal: () => {},
  observer: { finished() {} },
};

async function grpcJs(): Promise<{ target: string; stop(): Promise<void> }> {
  const server = createGrpcServer({ maxMessageBytes: 64 * 1024 });
  addBinding(server, binding, options.auth, options.onInternal, options.observer);
  const port = await listenGrpc(server, "127.0.0.1", 0);
  return { target: `127.0.0.1:${port}`, stop: () => new Promise((resolve) => server.tryShutdown(() => resolve())) };
}

async function connectNode(): Promise<{ target: string; stop(): Promise<void> }> {
  const verifyKey = invoker(CONNECT_CALLS, binding, ApiKeyService.method.verifyKey, options);
  const handler = connectNodeAdapter({
    routes: (router) =>
      router.service(ApiKeyService, {
        verifyKey: (req: unknown, ctx: never) => new Promise((resolve, reject) => verifyKey(ctx, req, (error, res) => (error === null ? resolve(res as never) : reject(error)))),
      } as never),
  });
  const server = http2.createServer(handler);
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as { port: number }).port;
  return { target: `127.0.0.1:${port}`, stop: () => new Promise((resolve) => server.close(() => resolve())) };
}

async function main(): Promise<void> {
  if (!ensureH2load(false)) throw new Error("h2load is needed (Debian: apt-get install nghttp2-client)");
  const frame = grpcFrame(toBinary(VerifyKeyRequestSchema, create(VerifyKeyRequestSchema, { key: "sk_x" })));
  const servers = { "grpc-js": await grpcJs(), "connect-node (node:http2)": await connectNode() };
  const tool = (process.env.TOOL ?? "h2load") as "h2load" | "node";
  const load = (target: string) =>
    runLoad(tool, {
      target,
      path: "/apikeys.v1.ApiKeyService/VerifyKey",
      token: TOKEN,
      frames: [frame],
      connections: 4,
      inFlight: 64,
      durationS,
      warmupS: 2,
      rate: 0,
    });
  const totals: Record<string, number> = {};
  for (let round = 1; round <= rounds; round++) {
    for (const [name, server] of Object.entries(servers)) {
      const result = await load(server.target);
      if (result.failed > 0) throw new Error(`${name}: ${result.failed} failed requests (${JSON.stringify(result.failures)})`);
      totals[name] = (totals[name] ?? 0) + result.rps;
      process.stdout.write(`round ${round}  ${name.padEnd(26)} ${Math.round(result.rps)} req/s  p50 ${result.p50Ms.toFixed(2)} ms  p99 ${result.p99Ms.toFixed(2)} ms\n`);
    }
  }
  const [grpc, connect] = Object.values(totals);
  process.stdout.write(`connect-node / grpc-js, sum over ${rounds} rounds: ${(connect / grpc).toFixed(2)}×\n`);
  await Promise.all(Object.values(servers).map((s) => s.stop()));
}

main().then(
  () => process.exit(0),
  (err) => {
    process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  },
);
