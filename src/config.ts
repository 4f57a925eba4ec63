// The only reader of process.env. Parses and validates everything once, with
// defaults, and fails start-up with a message naming the variable at fault.
import { availableParallelism } from "node:os";
import { ConfigError } from "./config-error.js";
import { isValidPrefix } from "./keys/key-format.js";
import { DEFAULT_POLICY, type KeyPolicy, parsePolicy, parseRoleAliases } from "./keys/policy.js";
import type { RedisNode, RedisTarget } from "./redis/connections.js";
import { type Access, type CallerConfig, digest } from "./transport/auth.js";
import type { TlsConfig } from "./transport/tls.js";

export interface Config {
  /** Dev mode: in-memory store, in-process bus, demo data, no secrets required. */
  dev: boolean;
  host: string;
  grpcPort: number;
  httpPort: number;
  mysqlUrl: string;
  /** Apply pending migrations at start (needs DDL rights); false: refuse to start while any are pending (src/store/migrate.ts). */
  migrateOnStart: boolean;
  /** A read replica (MariaDB, GTID replication) for cold verifications and listings; null = none (src/store/mysql-store.ts). */
  mysqlReplicaUrl: string | null;
  /** Send a transaction's statements as multi-statement batches; false for vtgate (src/store/mysql-pool.ts, docs/vitess.md). */
  mysqlPipelining: boolean;
  /** Redis for the broadcast and the usage limits: REDIS_URL, or REDIS_CLUSTER_NODES when set (see src/redis/connections.ts). */
  redis: RedisTarget;
  pepper: string;
  /** The pepper before the last rotation: hashes made with it are found and re-hashed (see src/keys/hashing.ts). */
  previousPepper: string | null;
  defaultPrefix: string;
  policy: KeyPolicy;
  callers: CallerConfig[];
  allowUnauthenticated: boolean;
  /** TLS (and, with a client CA, mutual TLS) on the gRPC port; null = plaintext. */
  tls: TlsConfig | null;
  cacheMaxEntries: number;
  cacheTtlMs: number;
  negativeCacheTtlMs: number;
  /** Unknown keys the cache remembers, apart from known ones (so forged keys never push real keys out). */
  negativeCacheMaxEntries: number;
  /** The membership filter of stored secret hashes: unknown keys answered without a lookup (src/keys/membership.ts). */
  membershipFilter: boolean;
  /** Database lookups that find nothing, per second: all callers, and each caller (src/keys/unknown-key-budget.ts); 0 = unbounded. */
  unknownLookupsPerSecond: number;
  unknownLookupsPerCallerPerSecond: number;
  /** How long a cache stays trusted without hearing back from Redis (see src/broadcast/redis-broadcast.ts). */
  cacheLeaseMs: number;
  /** How often the invalidation outbox is polled, and how old a row must be to be published by it (docs/revocation.md). */
  outboxPollMs: number;
  lastUsedFlushMs: number;
  /** How often consumed credits are copied from Redis to MySQL (see src/limits/redis-usage-limiter.ts). */
  creditFlushMs: number;
  maxMessageBytes: number;
  shutdownGraceMs: number;
  /** How often the database is pinged for health checking (see src/observability/health.ts). */
  healthPollMs: number;
  logLevel: string;
  /** Server processes sharing the ports (node:cluster); 1 = this process serves. */
  workers: number;
  /** Envoy ext_authz: the request header (lower case) that names the required scopes; "" = none (see src/envoy/ext-authz.ts). */
  extAuthzScopesHeader: string;
  /** Bounds per connection and per port (see src/transport/grpc-server.ts, http-server.ts, observability/health.ts). */
  grpcMaxConcurrentStreams: number;
  grpcMaxConnectionIdleMs: number;
  healthMaxWatches: number;
  httpMaxConnections: number;
  httpHeadersTimeoutMs: number;
  httpRequestTimeoutMs: number;
  /** The largest Envoy CheckRequest read (a request's headers); larger ones fail in grpc-js, before any handler. */
  extAuthzMaxMessageBytes: number;
}

const DEV_PEPPER = "dev-mode-pepper-not-a-secret";

type Env = Record<string, string | undefined>;

function int(env: Env, name: string, fallback: number, min: number, max: number): number {
  const raw = env[name];
  if (raw === undefined || raw === "") return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min || n > max) throw new ConfigError(`${name} must be an integer from ${min} to ${max}, got "${raw}"`);
  return n;
}

function workerCount(env: Env): number {
  try {
    return int(env, "WORKERS", 1, 1, 256);
  } catch {
    throw new ConfigError(`WORKERS must be "auto" (one per CPU) or an integer from 1 to 256, got "${env.WORKERS}"`);
  }
}

/** MYSQL_URL: all `npm run migrate` needs (no pepper, no callers). */
export function mysqlUrl(env: Env): string {
  return env.MYSQL_URL || "mysql://root@127.0.0.1:3306/apikeys";
}

function bool(env: Env, name: string, fallback = false): boolean {
  const raw = (env[name] ?? "").toLowerCase();
  if (raw === "") return fallback;
  if (raw === "false" || raw === "0") return false;
  if (raw === "true" || raw === "1") return true;
  throw new ConfigError(`${name} must be true or false, got "${env[name]}"`);
}

function headerName(env: Env, name: string): string {
  const raw = (env[name] ?? "").trim().toLowerCase();
  // RFC 9110 token characters.
  if (raw !== "" && !/^[a-z0-9!#$%&'*+.^_`|~-]+$/.test(raw)) throw new ConfigError(`${name} must be an HTTP header name, got "${env[name]}"`);
  return raw;
}

const CALLERS_FIELDS = "name, token, token_sha256, cert_identity, allow, organizations";
const ACCESS: readonly Access[] = ["verify", "manage", "admin"];

function parseCallers(raw: string | undefined): CallerConfig[] {
  if (!raw) return [];
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw);
  } catch {
    throw new ConfigError('CALLERS must be JSON, e.g. [{"name":"web","token":"…","allow":["manage","verify"]}]');
  }
  if (!Array.isArray(parsed)) throw new ConfigError("CALLERS must be a JSON list of callers");
  const names = new Set<string>();
  const digests = new Set<string>();
  const certIdentities = new Set<string>();
  return parsed.map((c, i): CallerConfig => {
    if (typeof c !== "object" || c === null || Array.isArray(c)) throw new ConfigError(`CALLERS[${i}] must be an object`);
    const { name, token, token_sha256: tokenSha256, cert_identity: certIdentity, allow, organizations, ...unknown } = c as Record<string, unknown>;
    // A misspelt field would otherwise be ignored silently, e.g. a caller allowed less or more than meant.
    const extra = Object.keys(unknown);
    if (extra.length > 0) throw new ConfigError(`CALLERS[${i}]: unknown field "${extra[0]}" (known: ${CALLERS_FIELDS})`);
    // The name is recorded in audit events and used as a metrics label: short and printable.
    if (typeof name !== "string" || !CALLER_NAME.test(name)) {
      throw new ConfigError(`CALLERS[${i}].name must be 1 to 64 letters, digits, ".", "_" or "-"`);
    }
    if (names.has(name)) throw new ConfigError(`CALLERS: the name "${name}" is used twice`);
    names.add(name);
    const at = `CALLERS[${i}] ("${name}")`;
    if (token === undefined && tokenSha256 === undefined && certIdentity === undefined) {
      throw new ConfigError(`${at}: needs a token (or its token_sha256), a cert_identity, or both`);
    }
    if (token !== undefined && tokenSha256 !== undefined) throw new ConfigError(`${at}: give token or token_sha256, not both`);
    let tokenDigest: Buffer | undefined;
    if (token !== undefined) {
      if (typeof token !== "string") throw new ConfigError(`${at}: token must be a string`);
      const weakness = tokenWeakness(token);
      if (weakness !== null) throw new ConfigError(`${at}: the token is weak (${weakness}). ${STRONG_TOKEN_HINT}`);
      tokenDigest = digest(token);
    }
    if (tokenSha256 !== undefined) {
      if (typeof tokenSha256 !== "string" || !/^[0-9a-fA-F]{64}$/.test(tokenSha256)) {
        throw new ConfigError(`${at}: token_sha256 must be the token's SHA-256 as 64 hex digits (printf %s "$TOKEN" | sha256sum)`);
      }
      tokenDigest = Buffer.from(tokenSha256, "hex");
    }
    if (tokenDigest !== undefined) {
      // Two callers with one token would be one caller with whichever rights were read last.
      const seen = tokenDigest.toString("hex");
      if (digests.has(seen)) throw new ConfigError(`${at}: token is the same as an earlier caller's`);
      digests.add(seen);
    }
    if (certIdentity !== undefined) {
      if (typeof certIdentity !== "string" || !CERT_IDENTITY.test(certIdentity)) {
        throw new ConfigError(`${at}: cert_identity must be "CN=<common name>", "DNS:<name>" or "URI:<uri>"`);
      }
      if (certIdentities.has(certIdentity)) {
        throw new ConfigError(`${at}: cert_identity "${certIdentity}" is used twice`);
      }
      certIdentities.add(certIdentity);
    }
    if (!Array.isArray(allow) || allow.length === 0 || !allow.every((a) => ACCESS.includes(a as Access))) {
      throw new ConfigError(`${at}: allow must list one or more of "verify", "manage", "admin"`);
    }
    if (organizations !== undefined) {
      if (!Array.isArray(organizations) || organizations.length === 0 || !organizations.every((o) => typeof o === "string" && ORGANIZATION_PATTERN.test(o))) {
        throw new ConfigError(
          `${at}: organizations must be a non-empty list of organization ids or prefixes ending in "*" (e.g. ["org_a", "team_*"]); leave it out for every organization`,
        );
      }
    }
    return {
      name,
      allow: [...new Set(allow as Access[])],
      ...(tokenDigest !== undefined && { tokenSha256: tokenDigest }),
      ...(certIdentity !== undefined && { certIdentity }),
      ...(organizations !== undefined && { organizations: organizations as string[] }),
    };
  });
}

/** 127.0.0.0/8, ::1 (also as ::ffff:127.x) or localhost: never 0.0.0.0, ::, a name or another interface. */
function isLoopback(host: string): boolean {
  const h = host.toLowerCase().replace(/^\[(.*)\]$/, "$1");
  if (h === "localhost" || h === "::1" || h === "0:0:0:0:0:0:0:1") return true;
  const v4 = h.startsWith("::ffff:") ? h.slice(7) : h;
  const octets = v4.split(".");
  return octets.length === 4 && octets[0] === "127" && octets.every((o) => /^\d{1,3}$/.test(o) && Number(o) <= 255);
}

/**
 * Why a caller token is too easy to guess, or null. A token is a password
 * nobody types: it should be random, long and drawn from a wide alphabet.
 * Length and variety are what can be checked; the bar is met by any output
 * of `openssl rand -base64 32` or `openssl rand -hex 32`.
 */
export function tokenWeakness(token: string): string | null {
  if (/\s/.test(token)) return "it contains white space";
  if (token.length < MIN_TOKEN_LENGTH) return `${token.length} characters; at least ${MIN_TOKEN_LENGTH} are needed`;
  const classes = [/[a-z]/, /[A-Z]/, /[0-9]/, /[^a-zA-Z0-9]/].filter((c) => c.test(token)).length;
  if (classes < 2) return "it uses one kind of character only; mix at least two of lower case, upper case, digits and symbols";
  const distinct = new Set(token).size;
  if (distinct < MIN_TOKEN_DISTINCT) return `only ${distinct} different characters; at least ${MIN_TOKEN_DISTINCT} are needed`;
  return null;
}

const MIN_TOKEN_LENGTH = 32;
const MIN_TOKEN_DISTINCT = 10;
const STRONG_TOKEN_HINT = "Use a random one, e.g. `openssl rand -base64 32`, or configure its digest as token_sha256.";
/** Organization ids as the API accepts them (see requireId), optionally ending in "*" for a prefix. */
const ORGANIZATION_PATTERN = /^[A-Za-z0-9._:@|/+=-]{1,128}\*?$/;

const CALLER_NAME = /^[A-Za-z0-9._-]{1,64}$/;
const CERT_IDENTITY = /^(CN=|DNS:|URI:)\S.{0,254}$/;

function tlsConfig(env: Env): TlsConfig | null {
  const certFile = env.TLS_CERT_FILE || "";
  const keyFile = env.TLS_KEY_FILE || "";
  const clientCaFile = env.TLS_CLIENT_CA_FILE || "";
  if (certFile === "" && keyFile === "") {
    if (clientCaFile !== "") throw new ConfigError("TLS_CLIENT_CA_FILE needs TLS_CERT_FILE and TLS_KEY_FILE (the server's own certificate)");
    return null;
  }
  if (certFile === "" || keyFile === "") throw new ConfigError("TLS_CERT_FILE and TLS_KEY_FILE must be set together");
  return { certFile, keyFile, clientCaFile: clientCaFile === "" ? null : clientCaFile };
}

/** A Redis URL or cluster entry for an error message: the password (and a user without one, which may be one) hidden. */
function redactUserinfo(raw: string): string {
  return raw.replace(/\/\/(.*)@/, (_all, userinfo: string) => {
    const colon = userinfo.indexOf(":");
    return colon < 0 ? "//***@" : `//${userinfo.slice(0, colon)}:***@`;
  });
}

const HOST_PORT = /^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?):([0-9]{1,5})$/;

function node(host: string, port: number, what: string): RedisNode {
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new ConfigError(`${what}: the port must be from 1 to 65535`);
  // Brackets are URL syntax for an IPv6 address; the socket wants the bare address.
  return { host: host.startsWith("[") ? host.slice(1, -1) : host, port };
}

/** redis://[user:password@]host[:port][/db] or rediss://…; user and password percent-encoded. */
function redisUrl(variable: string, raw: string): Omit<RedisTarget, "cluster" | "tlsCaFile"> {
  const what = `${variable} "${redactUserinfo(raw)}"`;
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new ConfigError(`${what} is not a URL: expected redis://[user:password@]host:port or rediss://… for TLS`);
  }
  if (url.protocol !== "redis:" && url.protocol !== "rediss:") throw new ConfigError(`${what}: the scheme must be redis:// or rediss:// (TLS)`);
  if (url.hostname === "") throw new ConfigError(`${what}: no host`);
  if (url.search !== "" || url.hash !== "") throw new ConfigError(`${what}: options in the URL are not supported`);
  const path = url.pathname.replace(/^\//, "");
  if (!/^[0-9]{0,5}$/.test(path)) throw new ConfigError(`${what}: the path must be a database number`);
  let username: string | null = null;
  let password: string | null = null;
  try {
    username = url.username === "" ? null : decodeURIComponent(url.username);
    password = url.password === "" ? null : decodeURIComponent(url.password);
  } catch {
    throw new ConfigError(`${what}: the user or password is not valid percent-encoding`);
  }
  // "redis://secret@host" is a user named "secret" to a URL parser; to Redis it was most likely meant as the password.
  if (username !== null && password === null) {
    throw new ConfigError(`${what}: a user without a password; write redis://:password@host for the default user, redis://user:password@host for an ACL user`);
  }
  return {
    nodes: [node(url.hostname, url.port === "" ? 6379 : Number(url.port), what)],
    db: path === "" ? 0 : Number(path),
    tls: url.protocol === "rediss:",
    username,
    password,
  };
}

/**
 * REDIS_CLUSTER_NODES: seed nodes "host:port,host:port,…". The first may be written as a URL
 * (rediss://user:password@host:port) whose scheme and credentials apply to every node.
 */
function redisCluster(raw: string, tlsCaFile: string | null): RedisTarget {
  const entries = raw.split(",").map((e) => e.trim());
  let access: Omit<RedisTarget, "cluster" | "tlsCaFile" | "nodes"> = { db: 0, tls: false, username: null, password: null };
  const nodes: RedisNode[] = [];
  const seen = new Set<string>();
  entries.forEach((entry, i) => {
    const what = `REDIS_CLUSTER_NODES entry ${i + 1} "${redactUserinfo(entry)}"`;
    let parsed: RedisNode;
    if (entry.includes("://")) {
      if (i > 0) throw new ConfigError(`${what}: only the first entry may be a URL (its scheme and credentials apply to every node); write host:port`);
      const url = redisUrl("REDIS_CLUSTER_NODES", entry);
      if (url.db !== 0) throw new ConfigError(`${what}: a cluster has database 0 only`);
      ({ nodes: [parsed], ...access } = url);
    } else {
      const m = HOST_PORT.exec(entry);
      if (m === null) throw new ConfigError(`${what} is not host:port (e.g. 10.0.0.1:6379, redis-1.internal:6379, [fd00::1]:6379)`);
      parsed = node(m[1], Number(m[2]), what);
    }
    const id = `${parsed.host}:${parsed.port}`;
    if (seen.has(id)) throw new ConfigError(`${what}: ${id} is listed twice`);
    seen.add(id);
    nodes.push(parsed);
  });
  return { ...access, nodes, cluster: true, tlsCaFile };
}

/** Redis as REDIS_URL, REDIS_CLUSTER_NODES and REDIS_TLS_CA_FILE describe it (exported for tests that start their own). */
export function redisTarget(env: Env): RedisTarget {
  const tlsCaFile = env.REDIS_TLS_CA_FILE || null;
  const clusterNodes = (env.REDIS_CLUSTER_NODES ?? "").trim();
  // The cluster wins: REDIS_URL may still be set from a standalone deployment (or a default in an image).
  const target =
    clusterNodes !== ""
      ? redisCluster(clusterNodes, tlsCaFile)
      : { ...redisUrl("REDIS_URL", env.REDIS_URL || "redis://127.0.0.1:6379"), cluster: false, tlsCaFile };
  if (tlsCaFile !== null && !target.tls) {
    throw new ConfigError(
      `REDIS_TLS_CA_FILE is set but Redis is reached without TLS: use a rediss:// ${clusterNodes !== "" ? "first REDIS_CLUSTER_NODES entry" : "REDIS_URL"}`,
    );
  }
  return target;
}

export function loadConfig(env: Env, options: { dev: boolean }): Config {
  const dev = options.dev;
  const pepper = env.KEY_PEPPER ?? (dev ? DEV_PEPPER : "");
  if (pepper === "") throw new ConfigError("KEY_PEPPER is required outside dev mode (a random secret of at least 16 characters)");
  if (pepper.length < 16) throw new ConfigError("KEY_PEPPER must be at least 16 characters");
  const previousPepper = env.KEY_PEPPER_PREVIOUS || null;
  if (previousPepper !== null && previousPepper.length < 16) throw new ConfigError("KEY_PEPPER_PREVIOUS must be at least 16 characters");
  if (previousPepper === pepper) throw new ConfigError("KEY_PEPPER_PREVIOUS must differ from KEY_PEPPER");
  const defaultPrefix = env.DEFAULT_KEY_PREFIX || "sk";
  if (!isValidPrefix(defaultPrefix)) throw new ConfigError("DEFAULT_KEY_PREFIX must match [a-z][a-z0-9_]{0,15}");
  let policy: KeyPolicy;
  try {
    policy = parsePolicy(env.KEY_POLICY || DEFAULT_POLICY, parseRoleAliases(env.ROLE_ALIASES ?? ""));
  } catch (err) {
    throw new ConfigError((err as Error).message);
  }
  const callers = parseCallers(env.CALLERS);
  const tls = tlsConfig(env);
  const byCert = callers.find((c) => c.certIdentity !== undefined);
  if (byCert && !tls?.clientCaFile) {
    throw new ConfigError(`CALLERS: "${byCert.name}" has a cert_identity, which needs mutual TLS: set TLS_CLIENT_CA_FILE (and TLS_CERT_FILE, TLS_KEY_FILE)`);
  }
  const allowUnauthenticated = dev ? callers.length === 0 : bool(env, "ALLOW_UNAUTHENTICATED_CALLERS");
  const workers = env.WORKERS === "auto" ? availableParallelism() : workerCount(env);
  // Each worker is an instance of its own; only MySQL and Redis make them one service.
  if (dev && workers > 1) throw new ConfigError("WORKERS must be 1 in dev mode: the in-memory store is per process");
  if (!dev && callers.length === 0 && !allowUnauthenticated) {
    throw new ConfigError(
      "CALLERS is not set: refusing to start an identity service anyone can call. Set CALLERS, or ALLOW_UNAUTHENTICATED_CALLERS=true on a trusted network.",
    );
  }
  const host = env.HOST || "127.0.0.1";
  // Dev mode has no pepper of its own, no callers and demo data: reachable from this machine only.
  if (dev && !isLoopback(host)) {
    throw new ConfigError(`HOST must be a loopback address in dev mode (127.0.0.1, ::1 or localhost), got "${host}": dev mode lets anyone call it`);
  }
  return {
    dev,
    host,
    grpcPort: int(env, "GRPC_PORT", 50051, 0, 65535),
    httpPort: int(env, "HTTP_PORT", 8080, 0, 65535),
    mysqlUrl: mysqlUrl(env),
    migrateOnStart: bool(env, "MIGRATE_ON_START", true),
    mysqlReplicaUrl: env.MYSQL_REPLICA_URL || null,
    mysqlPipelining: bool(env, "MYSQL_PIPELINING", true),
    redis: redisTarget(env),
    pepper,
    previousPepper,
    defaultPrefix,
    policy,
    callers,
    allowUnauthenticated,
    tls,
    cacheMaxEntries: int(env, "CACHE_MAX_ENTRIES", 100_000, 0, 10_000_000),
    cacheTtlMs: int(env, "CACHE_TTL_SECONDS", 300, 1, 86_400) * 1000,
    negativeCacheTtlMs: int(env, "NEGATIVE_CACHE_TTL_SECONDS", 30, 1, 3600) * 1000,
    negativeCacheMaxEntries: int(env, "NEGATIVE_CACHE_MAX_ENTRIES", 10_000, 0, 10_000_000),
    membershipFilter: env.MEMBERSHIP_FILTER === undefined || env.MEMBERSHIP_FILTER === "" ? true : bool(env, "MEMBERSHIP_FILTER"),
    unknownLookupsPerSecond: int(env, "UNKNOWN_KEY_LOOKUPS_PER_SECOND", 1000, 0, 1_000_000),
    unknownLookupsPerCallerPerSecond: int(env, "UNKNOWN_KEY_LOOKUPS_PER_CALLER_PER_SECOND", 200, 0, 1_000_000),
    cacheLeaseMs: int(env, "CACHE_LEASE_MS", 1500, 100, 60_000),
    outboxPollMs: int(env, "OUTBOX_POLL_MS", 1000, 100, 60_000),
    lastUsedFlushMs: int(env, "LAST_USED_FLUSH_SECONDS", 5, 1, 3600) * 1000,
    creditFlushMs: int(env, "CREDIT_FLUSH_SECONDS", 5, 1, 3600) * 1000,
    maxMessageBytes: int(env, "MAX_MESSAGE_BYTES", 64 * 1024, 1024, 16 * 1024 * 1024),
    shutdownGraceMs: int(env, "SHUTDOWN_GRACE_SECONDS", 10, 0, 600) * 1000,
    healthPollMs: int(env, "HEALTH_POLL_MS", 2000, 100, 60_000),
    logLevel: env.LOG_LEVEL || "info",
    workers,
    extAuthzScopesHeader: headerName(env, "EXT_AUTHZ_SCOPES_HEADER"),
    grpcMaxConcurrentStreams: int(env, "GRPC_MAX_CONCURRENT_STREAMS", 100, 1, 100_000),
    grpcMaxConnectionIdleMs: int(env, "GRPC_MAX_CONNECTION_IDLE_SECONDS", 300, 1, 86_400) * 1000,
    healthMaxWatches: int(env, "HEALTH_MAX_WATCHES", 1000, 1, 1_000_000),
    httpMaxConnections: int(env, "HTTP_MAX_CONNECTIONS", 10_000, 1, 1_000_000),
    httpHeadersTimeoutMs: int(env, "HTTP_HEADERS_TIMEOUT_SECONDS", 10, 1, 600) * 1000,
    httpRequestTimeoutMs: int(env, "HTTP_REQUEST_TIMEOUT_SECONDS", 30, 1, 3600) * 1000,
    extAuthzMaxMessageBytes: int(env, "EXT_AUTHZ_MAX_MESSAGE_BYTES", 1024 * 1024, 1024, 16 * 1024 * 1024),
  };
}
