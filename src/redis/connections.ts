// The one place that knows how to reach Redis: a standalone server or a
// Redis Cluster (seed nodes), plain or TLS, with or without an ACL user.
// Each part of the service asks for a connection by its role and gets the
// options that role needs; none of them builds a client of its own.
import { readFileSync } from "node:fs";
import type { ConnectionOptions } from "node:tls";
import { Cluster, type ClusterOptions, Redis, type RedisOptions } from "ioredis";
import { ConfigError } from "../config-error.js";
import type { Logger } from "../logger.js";

export interface RedisNode {
  host: string;
  port: number;
}

/** How to reach Redis, parsed once from REDIS_URL or REDIS_CLUSTER_NODES (see src/config.ts). */
export interface RedisTarget {
  /** Standalone: the one server. Cluster: the seed nodes, from which the client learns the rest. */
  nodes: RedisNode[];
  cluster: boolean;
  /** Database number (standalone only: a cluster has database 0 alone). */
  db: number;
  /** rediss://: TLS to every node. */
  tls: boolean;
  /** CA bundle (PEM) the server certificates must chain to; null = the system's CAs. */
  tlsCaFile: string | null;
  /** ACL user; null = "default". */
  username: string | null;
  /** Never logged: describeRedisTarget leaves it out. */
  password: string | null;
}

/**
 * What a connection is for:
 * - publisher: the broadcast (PUBLISH/SPUBLISH; its subscriber connections are duplicates of this one,
 *   see src/broadcast/redis-pubsub.ts): fails at once while disconnected, never queues a revoke;
 * - limiter: the usage counters, on the hot path: fails fast, bounded command time, auto-pipelined.
 */
export type RedisRole = "publisher" | "limiter";

export type RedisClient = Redis | Cluster;

export interface RedisClientOptions {
  /** Connection errors (each reconnect attempt of an outage) go here, at debug level: health and metrics report outages. */
  logger: Logger;
  /** limiter: how long one command may take before the verification fails (ms). */
  commandTimeoutMs?: number;
}

const CONNECT_TIMEOUT_MS = 1000;
const DEFAULT_COMMAND_TIMEOUT_MS = 1000;

/** Reconnect soon, then at most once a second: an outage is noticed and left as fast as Redis comes back. */
const backoff = (attempt: number) => Math.min(50 * attempt, 1000);

/** "cluster 10.0.0.1:6379,10.0.0.2:6379 (tls, user apikeys)": for logs and errors, without the password. */
function describeRedisTarget(target: RedisTarget): string {
  const where = target.nodes.map((n) => `${n.host}:${n.port}`).join(",");
  const how = [target.tls && "tls", target.username !== null && `user ${target.username}`, target.password !== null && "password"].filter(Boolean);
  return `${target.cluster ? "cluster" : "redis"} ${where}${target.cluster || target.db === 0 ? "" : `/${target.db}`}${how.length > 0 ? ` (${how.join(", ")})` : ""}`;
}

/**
 * TLS options, with the CA file read now: an unreadable or non-PEM file stops
 * start-up (buildApp) with a message naming the variable, not a failed handshake later.
 */
function tlsOptions(target: RedisTarget): ConnectionOptions | undefined {
  if (!target.tls) return undefined;
  if (target.tlsCaFile === null) return {};
  let ca: Buffer;
  try {
    ca = readFileSync(target.tlsCaFile);
  } catch (err) {
    throw new ConfigError(`REDIS_TLS_CA_FILE: cannot read "${target.tlsCaFile}" (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
  }
  if (!ca.toString("latin1").includes("-----BEGIN CERTIFICATE-----")) {
    throw new ConfigError(`REDIS_TLS_CA_FILE: "${target.tlsCaFile}" is not a PEM certificate`);
  }
  return { ca };
}

/** A new, unconnected client (lazyConnect: call connect()) for the role. */
export function redisClient(target: RedisTarget, role: RedisRole, options: RedisClientOptions): RedisClient {
  const tls = tlsOptions(target);
  const commandTimeout = options.commandTimeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS;
  const access = {
    connectTimeout: CONNECT_TIMEOUT_MS,
    ...(target.username !== null && { username: target.username }),
    ...(target.password !== null && { password: target.password }),
    ...(tls !== undefined && { tls }),
  };
  // Fail fast: while disconnected a command is rejected at once instead of queued (a revoke or
  // a verification must not hang), and on the hot path a stalled server fails the call after commandTimeout.
  if (!target.cluster) {
    const node = target.nodes[0];
    const redisOptions: RedisOptions = {
      ...access,
      host: node.host,
      port: node.port,
      db: target.db,
      lazyConnect: true,
      retryStrategy: backoff,
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      // The verifications of one event-loop turn reach Redis in one write (one pipeline), in order.
      ...(role === "limiter" && { commandTimeout, enableAutoPipelining: true }),
    };
    return watched(new Redis(redisOptions), target, role, options.logger, null);
  }
  const clusterOptions: ClusterOptions = {
    lazyConnect: true,
    clusterRetryStrategy: backoff,
    // A node that stops answering is found out by the next slots refresh or MOVED reply.
    slotsRefreshTimeout: CONNECT_TIMEOUT_MS,
    redisOptions: {
      ...access,
      maxRetriesPerRequest: 0,
      ...(role === "limiter" && { commandTimeout }),
    },
    // Keep the names the nodes announce: TLS checks the certificate against the name, not a resolved address.
    ...(tls !== undefined && { dnsLookup: (address: string, callback: (err: null, address: string) => void) => callback(null, address) }),
    // Fail fast here too: no waiting out a failover (CLUSTERDOWN, a closed connection) by retrying for up to
    // maxRedirections × 100 ms. The client learns the promoted replica from the next MOVED reply or slots refresh.
    enableOfflineQueue: false,
    retryDelayOnClusterDown: 0,
    retryDelayOnFailover: 0,
    ...(role === "limiter" && { enableAutoPipelining: true }),
  };
  const seed: RedisOptions = { ...access, ...target.nodes[0] };
  return watched(new Cluster(target.nodes, clusterOptions), target, role, options.logger, seed);
}

/** What each client made here reaches, for connectRedis's errors; for a cluster, how to reach its first seed alone. */
const reaches = new WeakMap<RedisClient, { description: string; seed: RedisOptions | null }>();

/** Remembers what the client reaches, and logs its errors (without a listener ioredis prints each one to stderr). */
function watched<C extends RedisClient>(client: C, target: RedisTarget, role: RedisRole, logger: Logger, seed: RedisOptions | null): C {
  reaches.set(client, { description: describeRedisTarget(target), seed });
  const log = (err: Error) => logger.debug({ err: err.message, role }, "redis connection error");
  client.on("error", log);
  client.on("node error", log); // a cluster node's
  return client;
}

/**
 * connect(), failing with what went wrong: ioredis itself rejects with only "Connection is closed."
 * after a refused password or a failed TLS handshake, and reports the cause as an error event.
 */
export async function connectRedis(client: RedisClient): Promise<void> {
  let cause: Error | null = null;
  const onError = (err: Error & { lastNodeError?: Error }) => {
    // The first error that says something: a cluster reports "Failed to refresh slots cache." or
    // "Connection is closed." for what one of its nodes refused (a password, a certificate).
    const detail = err.lastNodeError ?? err;
    if (cause === null || GENERIC_ERRORS.has(cause.message)) cause = detail;
  };
  client.on("error", onError);
  client.on("node error", onError); // a cluster node's
  const where = reaches.get(client);
  try {
    await client.connect();
  } catch (err) {
    let reason = (cause ?? (err as Error)).message;
    // A cluster's client does not pass on what its slot-map connections were told (a certificate refused):
    // one connection to the first seed alone says it.
    if (GENERIC_ERRORS.has(reason) && where?.seed) reason = (await refusal(where.seed)) ?? reason;
    throw new Error(`cannot reach ${where?.description ?? "redis"}: ${reason}`, { cause: err });
  } finally {
    client.off("error", onError);
    client.off("node error", onError);
  }
}

/** Why one connection with these options cannot be made, or null when it can. */
async function refusal(options: RedisOptions): Promise<string | null> {
  const probe = new Redis({ ...options, lazyConnect: true, retryStrategy: () => null, maxRetriesPerRequest: 0, enableOfflineQueue: false });
  let reason: string | null = null;
  probe.on("error", (err: Error) => {
    reason ??= err.message;
  });
  try {
    await probe.connect();
    return null;
  } catch (err) {
    return reason ?? (err as Error).message;
  } finally {
    probe.disconnect();
  }
}

const GENERIC_ERRORS = new Set(["Connection is closed.", "Failed to refresh slots cache."]);
