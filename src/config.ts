// The only reader of process.env. Parses and validates everything once, with
// defaults, and fails start-up with a message naming the variable at fault.
import { isValidPrefix } from "./keys/key-format.js";
import { DEFAULT_POLICY, type KeyPolicy, parsePolicy } from "./keys/policy.js";
import type { Access, CallerConfig } from "./transport/auth.js";

export interface Config {
  /** Dev mode: in-memory store, in-process bus, demo data, no secrets required. */
  dev: boolean;
  host: string;
  grpcPort: number;
  httpPort: number;
  mysqlUrl: string;
  redisUrl: string;
  pepper: string;
  defaultPrefix: string;
  policy: KeyPolicy;
  callers: CallerConfig[];
  allowUnauthenticated: boolean;
  cacheMaxEntries: number;
  cacheTtlMs: number;
  negativeCacheTtlMs: number;
  /** How long a cache stays trusted without hearing back from Redis (see src/broadcast/redis-broadcast.ts). */
  cacheLeaseMs: number;
  lastUsedFlushMs: number;
  /** How often consumed credits are copied from Redis to MySQL (see src/limits/redis-usage-limiter.ts). */
  creditFlushMs: number;
  maxMessageBytes: number;
  shutdownGraceMs: number;
  logLevel: string;
}

export class ConfigError extends Error {}

const DEV_PEPPER = "dev-mode-pepper-not-a-secret";

type Env = Record<string, string | undefined>;

function int(env: Env, name: string, fallback: number, min: number, max: number): number {
  const raw = env[name];
  if (raw === undefined || raw === "") return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min || n > max) throw new ConfigError(`${name} must be an integer from ${min} to ${max}, got "${raw}"`);
  return n;
}

function bool(env: Env, name: string): boolean {
  const raw = (env[name] ?? "").toLowerCase();
  if (raw === "" || raw === "false" || raw === "0") return false;
  if (raw === "true" || raw === "1") return true;
  throw new ConfigError(`${name} must be true or false, got "${env[name]}"`);
}

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
  return parsed.map((c, i) => {
    const { name, token, allow } = (c ?? {}) as Record<string, unknown>;
    if (typeof name !== "string" || name === "") throw new ConfigError(`CALLERS[${i}].name must be a non-empty string`);
    if (names.has(name)) throw new ConfigError(`CALLERS: the name "${name}" is used twice`);
    names.add(name);
    if (typeof token !== "string" || token.length < 16) {
      throw new ConfigError(`CALLERS[${i}] ("${name}"): token must be a string of at least 16 characters`);
    }
    if (!Array.isArray(allow) || allow.length === 0 || !allow.every((a) => a === "manage" || a === "verify")) {
      throw new ConfigError(`CALLERS[${i}] ("${name}"): allow must list "manage" and/or "verify"`);
    }
    return { name, token, allow: allow as Access[] };
  });
}

export function loadConfig(env: Env, options: { dev: boolean }): Config {
  const dev = options.dev;
  const pepper = env.KEY_PEPPER ?? (dev ? DEV_PEPPER : "");
  if (pepper === "") throw new ConfigError("KEY_PEPPER is required outside dev mode (a random secret of at least 16 characters)");
  if (pepper.length < 16) throw new ConfigError("KEY_PEPPER must be at least 16 characters");
  const defaultPrefix = env.DEFAULT_KEY_PREFIX || "sk";
  if (!isValidPrefix(defaultPrefix)) throw new ConfigError("DEFAULT_KEY_PREFIX must match [a-z][a-z0-9_]{0,15}");
  let policy: KeyPolicy;
  try {
    policy = parsePolicy(env.KEY_POLICY || DEFAULT_POLICY);
  } catch (err) {
    throw new ConfigError((err as Error).message);
  }
  const callers = parseCallers(env.CALLERS);
  const allowUnauthenticated = dev ? callers.length === 0 : bool(env, "ALLOW_UNAUTHENTICATED_CALLERS");
  if (!dev && callers.length === 0 && !allowUnauthenticated) {
    throw new ConfigError(
      "CALLERS is not set: refusing to start an identity service anyone can call. Set CALLERS, or ALLOW_UNAUTHENTICATED_CALLERS=true on a trusted network.",
    );
  }
  return {
    dev,
    host: env.HOST || "127.0.0.1",
    grpcPort: int(env, "GRPC_PORT", 50051, 0, 65535),
    httpPort: int(env, "HTTP_PORT", 8080, 0, 65535),
    mysqlUrl: env.MYSQL_URL || "mysql://root@127.0.0.1:3306/apikeys",
    redisUrl: env.REDIS_URL || "redis://127.0.0.1:6379",
    pepper,
    defaultPrefix,
    policy,
    callers,
    allowUnauthenticated,
    cacheMaxEntries: int(env, "CACHE_MAX_ENTRIES", 100_000, 0, 10_000_000),
    cacheTtlMs: int(env, "CACHE_TTL_SECONDS", 300, 1, 86_400) * 1000,
    negativeCacheTtlMs: int(env, "NEGATIVE_CACHE_TTL_SECONDS", 30, 1, 3600) * 1000,
    cacheLeaseMs: int(env, "CACHE_LEASE_MS", 1500, 100, 60_000),
    lastUsedFlushMs: int(env, "LAST_USED_FLUSH_SECONDS", 5, 1, 3600) * 1000,
    creditFlushMs: int(env, "CREDIT_FLUSH_SECONDS", 5, 1, 3600) * 1000,
    maxMessageBytes: int(env, "MAX_MESSAGE_BYTES", 64 * 1024, 1024, 16 * 1024 * 1024),
    shutdownGraceMs: int(env, "SHUTDOWN_GRACE_SECONDS", 10, 0, 600) * 1000,
    logLevel: env.LOG_LEVEL || "info",
  };
}
