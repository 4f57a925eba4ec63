// Wiring: every object is built once, here. buildApp returns an app that is
// not listening yet; only start() binds ports, so tests can start on port 0.
import type * as http from "node:http";
import type * as grpc from "@grpc/grpc-js";
import { LocalInvalidator } from "./broadcast/local-invalidator.js";
import { RedisBroadcast } from "./broadcast/redis-broadcast.js";
import type { Config } from "./config.js";
import { SecretHasher } from "./keys/hashing.js";
import type { Invalidator } from "./keys/invalidation.js";
import { KeyService } from "./keys/key-service.js";
import { LastUsedTracker } from "./keys/last-used.js";
import { OrganizationService } from "./keys/organization-service.js";
import { Verifier } from "./keys/verifier.js";
import { VerifyCache } from "./keys/verify-cache.js";
import { MemoryCreditLedger, MySqlCreditLedger } from "./limits/credit-ledger.js";
import { MemoryUsageLimiter } from "./limits/memory-usage-limiter.js";
import { RedisUsageLimiter } from "./limits/redis-usage-limiter.js";
import type { ManagedUsageLimiter } from "./limits/usage-limiter.js";
import { type Logger, createLogger } from "./logger.js";
import { MemoryStore } from "./store/memory-store.js";
import { MySqlStore } from "./store/mysql-store.js";
import type { Store } from "./store/store.js";
import { CallerAuth } from "./transport/auth.js";
import { type CallObserver, NO_OBSERVER, apiKeyBinding, organizationBinding } from "./transport/bindings.js";
import { addBinding, createGrpcServer, listenGrpc } from "./transport/grpc-server.js";
import { type HttpEndpoint, createHttpServer, listenHttp } from "./transport/http-server.js";

export interface AppOverrides {
  store?: Store;
  logger?: Logger;
  now?: () => number;
  /** Test seam, see RedisBroadcastOptions.deliveryDelayMs. */
  broadcastDeliveryDelayMs?: number;
}

export interface App {
  readonly config: Config;
  readonly logger: Logger;
  readonly store: Store;
  readonly keys: KeyService;
  readonly organizations: OrganizationService;
  readonly verifier: Verifier;
  readonly cache: VerifyCache | null;
  /** The Redis broadcast (null in dev mode, where one process needs none). */
  readonly broadcast: RedisBroadcast | null;
  readonly lastUsed: LastUsedTracker;
  /** Rate limits and credits: in Redis (credits saved to MySQL), in memory in dev mode. */
  readonly limiter: ManagedUsageLimiter;
  readonly grpcServer: grpc.Server;
  readonly httpServer: http.Server;
  /** Binds both ports (0 = any free port) and starts background work. */
  start(): Promise<{ grpcPort: number; httpPort: number }>;
  /** Stops accepting, drains in-flight calls, flushes last-used times and consumed credits, closes the store. */
  stop(): Promise<void>;
}

export async function openStore(config: Config): Promise<Store> {
  if (config.dev) return new MemoryStore();
  const store = await MySqlStore.open(config.mysqlUrl);
  await store.migrate();
  return store;
}

export async function buildApp(config: Config, overrides: AppOverrides = {}): Promise<App> {
  const logger = overrides.logger ?? createLogger(config.logLevel);
  const now = overrides.now ?? Date.now;
  const store = overrides.store ?? (await openStore(config));
  const hasher = new SecretHasher(config.pepper);
  const cache =
    config.cacheMaxEntries > 0
      ? new VerifyCache({ maxEntries: config.cacheMaxEntries, ttlMs: config.cacheTtlMs, negativeTtlMs: config.negativeCacheTtlMs })
      : null;
  const broadcast = config.dev
    ? null
    : new RedisBroadcast({
        redisUrl: config.redisUrl,
        cache,
        logger,
        leaseMs: config.cacheLeaseMs,
        now,
        deliveryDelayMs: overrides.broadcastDeliveryDelayMs,
      });
  const invalidator: Invalidator = broadcast ?? new LocalInvalidator(cache);
  const lastUsed = new LastUsedTracker(store, config.lastUsedFlushMs, (err) =>
    logger.warn({ err: String(err) }, "writing last-used times failed; will retry"),
  );
  const keys = new KeyService({ store, hasher, policy: config.policy, invalidator, defaultPrefix: config.defaultPrefix, now });
  const organizations = new OrganizationService({ store, policy: config.policy, invalidator, now });
  // The credit ledger lives beside the store: in MySQL, or in memory when the store is.
  const limiter: ManagedUsageLimiter = config.dev
    ? new MemoryUsageLimiter()
    : new RedisUsageLimiter({
        redisUrl: config.redisUrl,
        ledger: store instanceof MySqlStore ? MySqlCreditLedger.open(config.mysqlUrl) : new MemoryCreditLedger(),
        flushIntervalMs: config.creditFlushMs,
        logger,
      });
  const verifier = new Verifier({ store, hasher, cache, lastUsed, limiter, now });

  const auth = new CallerAuth(config.callers, config.allowUnauthenticated);
  const bindings = [apiKeyBinding(keys, verifier), organizationBinding(organizations)];
  const onInternal = (err: unknown, method: string) => logger.error({ err, method }, "internal error");
  const observer: CallObserver = NO_OBSERVER;

  const grpcServer = createGrpcServer({ maxMessageBytes: config.maxMessageBytes });
  for (const binding of bindings) addBinding(grpcServer, binding, auth, onInternal, observer);

  const endpoints: HttpEndpoint[] = [
    (req, res) => {
      if (req.url !== "/healthz") return false;
      res.writeHead(200, { "content-type": "text/plain" }).end("ok\n");
      return true;
    },
    (req, res) => {
      if (req.url !== "/readyz") return false;
      store.ping().then(
        () => res.writeHead(200, { "content-type": "text/plain" }).end("ready\n"),
        () => res.writeHead(503, { "content-type": "text/plain" }).end("database unavailable\n"),
      );
      return true;
    },
  ];
  const httpServer = createHttpServer({
    bindings,
    auth,
    onInternal,
    endpoints,
    maxMessageBytes: config.maxMessageBytes,
    observer,
  });

  let stopped: Promise<void> | null = null;
  return {
    config,
    logger,
    store,
    keys,
    organizations,
    verifier,
    cache,
    broadcast,
    lastUsed,
    limiter,
    grpcServer,
    httpServer,
    async start() {
      await broadcast?.start();
      await limiter.start();
      const grpcPort = await listenGrpc(grpcServer, config.host, config.grpcPort);
      const httpPort = await listenHttp(httpServer, config.host, config.httpPort);
      lastUsed.start();
      return { grpcPort, httpPort };
    },
    stop() {
      stopped ??= (async () => {
        await Promise.all([
          new Promise<void>((resolve) => {
            const force = setTimeout(() => grpcServer.forceShutdown(), config.shutdownGraceMs);
            grpcServer.tryShutdown(() => {
              clearTimeout(force);
              resolve();
            });
          }),
          new Promise<void>((resolve) => {
            if (!httpServer.listening) return resolve();
            const force = setTimeout(() => httpServer.closeAllConnections(), config.shutdownGraceMs);
            httpServer.close(() => {
              clearTimeout(force);
              resolve();
            });
            httpServer.closeIdleConnections();
          }),
        ]);
        await lastUsed.stop();
        await limiter.stop();
        await broadcast?.stop();
        await store.close();
      })();
      return stopped;
    },
  };
}
