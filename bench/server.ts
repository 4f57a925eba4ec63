// The server under test, run by bench/run.ts as a child process so that the
// load generator never shares its event loop. Configured from the environment
// exactly like `npm start`, with one argument:
//   service   the real service (buildApp), its store wrapped to count calls
//   baseline  a no-op VerifyKey on the same grpc-js stack (createGrpcServer,
//             addBinding, the same caller auth and options): the ceiling every
//             scenario is measured against
// Talks JSON lines: prints {"grpcPort",…} once listening, then answers each
// "stats" line on stdin with a stats line; "stop" or the end of stdin stops it
// gracefully (so that `node --cpu-prof` writes its profile).
import { createInterface } from "node:readline";
import { fromBinary } from "@bufbuild/protobuf";
import { ApiKeyService, VerifyKeyResponseSchema } from "../gen/apikeys/v1/apikeys_pb.js";
import { buildApp, openStore } from "../src/app.js";
import { loadConfig } from "../src/config.js";
import { ApiError, Status } from "../src/keys/errors.js";
import type { Store } from "../src/store/store.js";
import { CallerAuth } from "../src/transport/auth.js";
import { NO_OBSERVER, type ServiceBinding } from "../src/transport/bindings.js";
import { addBinding, createGrpcServer, listenGrpc } from "../src/transport/grpc-server.js";

/** What the parent reads through the "stats" command (see bench/children.ts). */
export interface ServerStats {
  rss: number;
  heapUsed: number;
  /** Verifications answered, by VerifyCode number. */
  verified: number[];
  malformed: number;
  cacheSize: number;
  /** Store calls by method name, e.g. findByHash, touchLastUsed. */
  storeCalls: Record<string, number>;
}

interface Running {
  grpcPort: number;
  httpPort: number;
  stats(): ServerStats;
  stop(): Promise<void>;
}

/** The store with every call counted: proves which scenarios reach the database, without touching src/. */
function countingStore(store: Store, calls: Record<string, number>): Store {
  return new Proxy(store, {
    get(target, prop, receiver) {
      const value = Reflect.get(target, prop, receiver);
      if (typeof value !== "function" || typeof prop !== "string") return value;
      return (...args: unknown[]) => {
        calls[prop] = (calls[prop] ?? 0) + 1;
        return value.apply(target, args);
      };
    },
  });
}

function memory(): Pick<ServerStats, "rss" | "heapUsed"> {
  const m = process.memoryUsage();
  return { rss: m.rss, heapUsed: m.heapUsed };
}

async function startService(): Promise<Running> {
  const config = loadConfig(process.env, { dev: false });
  const storeCalls: Record<string, number> = {};
  const app = await buildApp(config, { store: countingStore(await openStore(config), storeCalls) });
  const { grpcPort, httpPort } = await app.start();
  return {
    grpcPort,
    httpPort,
    stats: () => ({
      ...memory(),
      verified: Array.from(app.verifier.stats.byCode),
      malformed: app.verifier.stats.malformed,
      cacheSize: app.cache?.size ?? 0,
      storeCalls,
    }),
    stop: () => app.stop(),
  };
}

async function startBaseline(): Promise<Running> {
  const config = loadConfig(process.env, { dev: false });
  const encoded = process.env.BENCH_BASELINE_RESPONSE ?? "";
  if (encoded === "") throw new Error("BENCH_BASELINE_RESPONSE (base64 VerifyKeyResponse) is required in baseline mode");
  // The service's answer for the scenario's key, so both send the same bytes;
  // frozen like the service's cached answers, so the stack encodes it once.
  const answer = Object.freeze(fromBinary(VerifyKeyResponseSchema, Buffer.from(encoded, "base64")));
  const unimplemented = () => {
    throw new ApiError(Status.UNIMPLEMENTED, "UNIMPLEMENTED", "the baseline server only answers VerifyKey");
  };
  const handlers: Record<string, () => unknown> = Object.fromEntries(ApiKeyService.methods.map((m) => [m.localName, unimplemented]));
  handlers.verifyKey = () => answer;
  const binding = {
    service: ApiKeyService,
    handlers,
    access: (method: string) => (method === "verifyKey" ? "verify" : "manage"),
  } as unknown as ServiceBinding;
  const server = createGrpcServer({ maxMessageBytes: config.maxMessageBytes });
  const verified = new Array<number>(16).fill(0);
  addBinding(server, binding, new CallerAuth(config.callers, config.allowUnauthenticated), () => {}, {
    finished: () => {
      verified[answer.code]++;
    },
  });
  const grpcPort = await listenGrpc(server, config.host, config.grpcPort);
  return {
    grpcPort,
    httpPort: 0,
    stats: () => ({ ...memory(), verified, malformed: 0, cacheSize: 0, storeCalls: {} }),
    stop: () => new Promise((resolve) => server.tryShutdown(() => resolve())),
  };
}

async function main(): Promise<void> {
  const mode = process.argv[2];
  if (mode !== "service" && mode !== "baseline") throw new Error("usage: server.ts service|baseline");
  const running = mode === "service" ? await startService() : await startBaseline();
  // Tagged, because the service's own log lines share stdout.
  const say = (message: object) => process.stdout.write(`${JSON.stringify({ bench: true, ...message })}\n`);
  say({ grpcPort: running.grpcPort, httpPort: running.httpPort, pid: process.pid });
  let stopping: Promise<void> | null = null;
  const stop = () => {
    stopping ??= running.stop().then(() => process.exit(0));
  };
  const lines = createInterface({ input: process.stdin });
  lines.on("line", (line) => {
    if (line === "stats") say(running.stats());
    else if (line === "stop") stop();
  });
  lines.on("close", stop);
}

main().catch((err) => {
  process.stderr.write(`bench server: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
