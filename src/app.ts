// Wiring: every object is built once, here. buildApp returns an app that is
// not listening yet; only start() binds ports, so tests can start on port 0.
import type * as http from "node:http";
import type * as grpc from "@grpc/grpc-js";
import { ApiKeyService } from "../gen/apikeys/v1/apikeys_pb.js";
import { Authorization } from "../gen/envoy/service/auth/v3/external_auth_pb.js";
import { file_google_rpc_error_details } from "../gen/google/rpc/error_details_pb.js";
import { file_google_rpc_status } from "../gen/google/rpc/status_pb.js";
import { LocalInvalidator } from "./broadcast/local-invalidator.js";
import { RedisBroadcast } from "./broadcast/redis-broadcast.js";
import { InvalidationOutbox } from "./broadcast/outbox.js";
import { RedisPubSub } from "./broadcast/redis-pubsub.js";
import { redisClient } from "./redis/connections.js";
import type { Config } from "./config.js";
import { ExtAuthz, extAuthzBinding } from "./envoy/ext-authz.js";
import { SecretHasher } from "./keys/hashing.js";
import type { Invalidator } from "./keys/ports.js";
import { KeyService } from "./keys/key-service.js";
import { LastUsedTracker } from "./keys/last-used.js";
import { OrganizationService } from "./keys/organization-service.js";
import { Membership } from "./keys/membership.js";
import { UnknownKeyBudget } from "./keys/unknown-key-budget.js";
import { Verifier } from "./keys/verifier.js";
import { VerifyCache } from "./keys/verify-cache.js";
import { MemoryUsageLimiter } from "./limits/memory-usage-limiter.js";
import { RedisUsageLimiter } from "./limits/redis-usage-limiter.js";
import type { ManagedUsageLimiter } from "./keys/ports.js";
import { type Logger, createLogger } from "./logger.js";
import { callObserver } from "./observability/call-observer.js";
import { Health } from "./observability/health.js";
import { Metrics } from "./observability/metrics.js";
import { addReflection } from "./observability/reflection.js";
import { RpcLog } from "./observability/rpc-log.js";
import { MemoryStore } from "./store/memory-store.js";
import { MySqlStore } from "./store/mysql-store.js";
import type { Store } from "./keys/ports.js";
import { CallerAuth } from "./transport/auth.js";
import { apiKeyBinding, organizationBinding } from "./transport/bindings.js";
import { addBinding, createGrpcServer, listenGrpc } from "./transport/grpc-server.js";
import { createHttpServer, listenHttp } from "./transport/http-server.js";
import { Refusals } from "./transport/refusals.js";
import { grpcServerCredentials } from "./transport/tls.js";

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
  /** The membership filter of stored secret hashes (null when off, or without a cache). */
  readonly membership: Membership | null;
  readonly unknownBudget: UnknownKeyBudget | null;
  /** The Redis broadcast (null in dev mode, where one process needs none). */
  readonly broadcast: RedisBroadcast | null;
  readonly lastUsed: LastUsedTracker;
  /** Rate limits and credits: in Redis (credits saved to MySQL), in memory in dev mode. */
  readonly limiter: ManagedUsageLimiter;
  readonly grpcServer: grpc.Server;
  readonly httpServer: http.Server;
  /** Serving state for gRPC health checking and /readyz. */
  readonly health: Health;
  readonly metrics: Metrics;
  /** Binds both ports (0 = any free port) and starts background work. */
  start(): Promise<{ grpcPort: number; httpPort: number }>;
  /** Stops accepting, drains in-flight calls, flushes last-used times and consumed credits, closes the store. */
  stop(): Promise<void>;
}

export async function openStore(config: Config): Promise<Store> {
  if (config.dev) return new MemoryStore();
  const store = await MySqlStore.open(config.mysqlUrl, { pipelining: config.mysqlPipelining, replicaUrl: config.mysqlReplicaUrl });
  try {
    if (config.migrateOnStart) await store.migrate();
    else await store.checkSchema();
  } catch (err) {
    await store.close();
    throw err;
  }
  return store;
}

export async function buildApp(config: Config, overrides: AppOverrides = {}): Promise<App> {
  const logger = overrides.logger ?? createLogger(config.logLevel);
  const now = overrides.now ?? Date.now;
  const store = overrides.store ?? (await openStore(config));
  const hasher = new SecretHasher(config.pepper, config.previousPepper);
  const cache =
    config.cacheMaxEntries > 0
      ? new VerifyCache({
          maxEntries: config.cacheMaxEntries,
          ttlMs: config.cacheTtlMs,
          negativeTtlMs: config.negativeCacheTtlMs,
          negativeMaxEntries: config.negativeCacheMaxEntries,
        })
      : null;
  // Complete only while every "created" announcement reaches it, which the cache's lease vouches for: none without a cache.
  const membership =
    cache !== null && config.membershipFilter
      ? new Membership({ store, logger, trusted: config.dev ? null : () => cache.isTrusted() })
      : null;
  if (cache !== null) cache.membership = membership;
  const unknownBudget =
    config.unknownLookupsPerSecond > 0 && config.unknownLookupsPerCallerPerSecond > 0
      ? new UnknownKeyBudget({ perSecond: config.unknownLookupsPerSecond, perCallerPerSecond: config.unknownLookupsPerCallerPerSecond })
      : null;
  const broadcast = config.dev
    ? null
    : new RedisBroadcast({
        // The broadcast's own client (publisher role: publishes fail at once while disconnected, never queue).
        pubsub: new RedisPubSub(redisClient(config.redis, "publisher", { logger })),
        cache,
        logger,
        peppers: config.previousPepper === null ? [config.pepper] : [config.pepper, config.previousPepper],
        leaseMs: config.cacheLeaseMs,
        deliveryDelayMs: overrides.broadcastDeliveryDelayMs,
      });
  // Every change's invalidation is in the store's outbox until announced; the outbox worker announces what was left behind.
  const outbox = new InvalidationOutbox({
    invalidator: broadcast ?? new LocalInvalidator(cache),
    healthy: () => broadcast?.healthy ?? true,
    store,
    logger,
    pollMs: config.outboxPollMs,
  });
  const invalidator: Invalidator = outbox;
  const lastUsed = new LastUsedTracker(store, config.lastUsedFlushMs, (err) =>
    logger.warn({ err }, "writing last-used times failed; will retry"),
  );
  const keys = new KeyService({
    store,
    hasher,
    policy: config.policy,
    invalidator,
    defaultPrefix: config.defaultPrefix,
    announceSecrets: membership !== null,
    now,
  });
  const organizations = new OrganizationService({ store, policy: config.policy, invalidator, now });
  // The credit ledger lives beside the store: in MySQL, or in memory when the store is.
  const limiter: ManagedUsageLimiter = config.dev
    ? new MemoryUsageLimiter()
    : new RedisUsageLimiter({
        redis: config.redis,
        ledger: store.creditLedger(),
        flushIntervalMs: config.creditFlushMs,
        logger,
      });
  const verifier = new Verifier({ store, hasher, cache, lastUsed, limiter, membership, unknownBudget, now });

  const auth = new CallerAuth(config.callers, config.allowUnauthenticated);
  const bindings = [apiKeyBinding(keys, verifier), organizationBinding(organizations)];
  const onInternal = (err: unknown, method: string) => logger.error({ err, method }, "internal error");
  const refusals = new Refusals();
  const metrics = new Metrics({
    verifier,
    cache,
    membership,
    unknownBudget,
    broadcast,
    lastUsed,
    pool: store.poolStats !== undefined ? { poolStats: () => store.poolStats!() } : null,
    refusals,
  });
  // Answered verifications, from callers and from Envoy, are the hot path: logged at debug only (see rpc-log.ts).
  const rpcLog = new RpcLog(
    logger,
    new Set([ApiKeyService.method.verifyKey, ApiKeyService.method.verifyKeyStream, Authorization.method.check].map((m) => `/${m.parent.typeName}/${m.name}`)),
  );
  const observer = callObserver(metrics, rpcLog);
  // What the gRPC port serves (ext_authz is there only), for health checking and reflection.
  const grpcServices = [...bindings.map((b) => b.service), Authorization];
  const health = new Health({
    store,
    services: grpcServices.map((s) => s.typeName),
    logger,
    pollMs: config.healthPollMs,
    maxWatches: config.healthMaxWatches,
    refusals,
  });

  // Built now, so unreadable or mismatched certificate files fail buildApp rather than start().
  const grpcCredentials = grpcServerCredentials(config.tls);
  const grpcServer = createGrpcServer({
    maxMessageBytes: config.maxMessageBytes,
    largestMessageBytes: config.extAuthzMaxMessageBytes,
    maxConcurrentStreams: config.grpcMaxConcurrentStreams,
    maxConnectionIdleMs: config.grpcMaxConnectionIdleMs,
  });
  for (const binding of bindings) addBinding(grpcServer, binding, auth, onInternal, observer);
  // Envoy ext_authz: on the gRPC port only (Envoy calls it over gRPC); Envoy needs "verify" access.
  const checkPath = `/${Authorization.typeName}/${Authorization.method.check.name}`;
  const extAuthz = new ExtAuthz({ verifier, scopesHeader: config.extAuthzScopesHeader, now, onInternal: (err) => onInternal(err, checkPath) });
  addBinding(grpcServer, extAuthzBinding(extAuthz, config.extAuthzMaxMessageBytes), auth, onInternal, observer);
  health.addToServer(grpcServer);
  // The error-details files too, so grpcurl can decode the google.rpc.ErrorInfo of a failed call.
  addReflection(grpcServer, [...new Set(grpcServices.map((s) => s.file)), file_google_rpc_status, file_google_rpc_error_details]);

  const endpoints = [...health.endpoints(), metrics.endpoint()];
  const httpServer = createHttpServer({
    bindings,
    auth,
    onInternal,
    endpoints,
    maxMessageBytes: config.maxMessageBytes,
    observer,
    limits: { maxConnections: config.httpMaxConnections, headersTimeoutMs: config.httpHeadersTimeoutMs, requestTimeoutMs: config.httpRequestTimeoutMs },
    refusals,
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
    membership,
    unknownBudget,
    broadcast,
    lastUsed,
    limiter,
    grpcServer,
    httpServer,
    health,
    metrics,
    async start() {
      await broadcast?.start();
      // After subscribing: from here on, every key created anywhere reaches the filter being loaded.
      await membership?.load().catch((err: unknown) =>
        logger.warn({ err: err instanceof Error ? err.message : String(err) }, "loading the key membership filter failed; unknown keys go to the database"),
      );
      outbox.start();
      await limiter.start();
      await health.start();
      const grpcPort = await listenGrpc(grpcServer, config.host, config.grpcPort, grpcCredentials);
      const httpPort = await listenHttp(httpServer, config.host, config.httpPort);
      lastUsed.start();
      return { grpcPort, httpPort };
    },
    stop() {
      stopped ??= (async () => {
        // Health first, so load balancers stop sending calls while the rest drains.
        health.beginShutdown();
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
            // A keep-alive connection busy now turns idle when its call ends, and Node would
            // then keep it open for keepAliveTimeout: close idle ones as they appear.
            const sweep = setInterval(() => httpServer.closeIdleConnections(), 50);
            httpServer.close(() => {
              clearTimeout(force);
              clearInterval(sweep);
              resolve();
            });
          }),
        ]);
        await lastUsed.stop();
        await limiter.stop();
        await outbox.stop();
        await broadcast?.stop();
        await store.close();
      })();
      return stopped;
    },
  };
}
