// The in-process verification cache: secret hash → what VerifyKey needs,
// prepared once (the ApiKey and Principal messages are built at load time,
// not per call). Negative entries remember unknown hashes so floods of
// well-formed but unknown keys do not reach the database.
//
// Correctness rules:
// - Every invalidation bumps `generation`; a database load that started before
//   an invalidation does not populate the cache (it may hold pre-change state).
// - The cache is used only while trusted: until `trustedUntil`. A single
//   instance trusts it forever; with the Redis broadcast, trust is a lease the
//   instance renews by receiving its own pings through Redis, so an instance
//   that might be missing invalidations stops using its cache by itself.
import { LRUCache } from "lru-cache";
import type { ApiKey, Principal, Role, VerifyKeyResponse } from "../../gen/apikeys/v1/apikeys_pb.js";
import type { Invalidation } from "./invalidation.js";
import { toApiKey, toPrincipal } from "./mapping.js";
import type { LimitedKey } from "../limits/usage-limiter.js";
import type { VerifyRecord } from "./records.js";

/**
 * A cached key: the few facts verification decides on, and the answer
 * messages (which hold everything else). The record it was built from is not
 * kept: at 100k cached keys every field held twice is megabytes.
 */
export interface VerifyEntry {
  readonly keyId: string;
  readonly organizationId: string;
  readonly createdBy: string;
  readonly revokeTime: number | null;
  readonly expireTime: number | null;
  /** When this particular secret stops working (rotation grace), or null. */
  readonly secretExpireTime: number | null;
  /** The creator's current role; null when no longer a member. */
  readonly memberRole: Role | null;
  readonly orgEnabled: boolean;
  /** The key as the limiter sees it; null when it has no limits. */
  readonly limited: LimitedKey | null;
  /** Prebuilt for responses; state as of load time (expiry is re-checked per call). */
  readonly apiKey: ApiKey;
  readonly principal: Principal;
  /** Exact scopes, and prefixes of "x:*" wildcards; allScopes when the key has no scopes or "*". */
  readonly scopes: readonly string[];
  readonly wildcards: readonly string[];
  readonly allScopes: boolean;
  /**
   * Answers without usage data, by VerifyCode, built on first use and frozen:
   * until the entry is invalidated the answer for a code does not change, so
   * a cached verification allocates nothing and the transport may reuse the
   * encoded bytes (see src/transport/grpc-server.ts).
   */
  readonly responses: (VerifyKeyResponse | undefined)[];
}

const NONE: readonly string[] = Object.freeze([]);

/** Marker stored for hashes the database does not know. */
export const UNKNOWN: { readonly unknown: true } = Object.freeze({ unknown: true });
export type CacheValue = VerifyEntry | typeof UNKNOWN;

export function isKnown(value: CacheValue): value is VerifyEntry {
  return value !== UNKNOWN;
}

export interface VerifyCacheOptions {
  maxEntries: number;
  ttlMs: number;
  negativeTtlMs: number;
}

export function buildEntry(record: VerifyRecord, now: number): VerifyEntry {
  const key = record.key;
  const scopes: string[] = [];
  const wildcards: string[] = [];
  let allScopes = key.scopes.length === 0;
  for (const s of key.scopes) {
    if (s === "*") allScopes = true;
    else if (s.endsWith(":*")) wildcards.push(s.slice(0, -1)); // "documents:*" → "documents:"
    else scopes.push(s);
  }
  return {
    keyId: key.id,
    organizationId: key.organizationId,
    createdBy: key.createdBy,
    revokeTime: key.revokeTime,
    expireTime: key.expireTime,
    secretExpireTime: record.secretExpireTime,
    memberRole: record.memberRole,
    orgEnabled: record.orgEnabled,
    limited: key.limits === null ? null : { id: key.id, limits: key.limits },
    apiKey: toApiKey(key, now),
    principal: toPrincipal(record),
    scopes: scopes.length === 0 ? NONE : scopes,
    wildcards: wildcards.length === 0 ? NONE : wildcards,
    allScopes,
    responses: [],
  };
}

export class VerifyCache {
  /** Bumped by every invalidation; see the file comment. */
  generation = 0;
  private trustedUntil = Number.POSITIVE_INFINITY;
  private readonly lru: LRUCache<string, CacheValue>;
  private readonly negativeTtlMs: number;
  // Secondary indexes of positive entries, so an invalidation touches only the
  // entries it concerns instead of scanning the cache (which at 100k entries
  // blocked the event loop for tens of milliseconds on every instance). Kept
  // in step with the LRU through its dispose callback. A key almost always has
  // one live secret, so byKey holds a plain hash until a second one appears.
  private readonly byKey = new Map<string, string | Set<string>>();
  private readonly byOrg = new Map<string, Set<string>>();
  hits = 0;
  misses = 0;

  constructor(options: VerifyCacheOptions) {
    this.lru = new LRUCache({
      max: options.maxEntries,
      ttl: options.ttlMs,
      updateAgeOnGet: false,
      dispose: (value, hashKey) => {
        if (isKnown(value)) this.unindex(hashKey, value);
      },
    });
    this.negativeTtlMs = options.negativeTtlMs;
  }

  isTrusted(now: number): boolean {
    return now < this.trustedUntil;
  }

  /** The cached value, or undefined on a miss (also whenever the cache is not trusted at `now`). */
  get(hashKey: string, now: number): CacheValue | undefined {
    if (now >= this.trustedUntil) return undefined;
    const hit = this.lru.get(hashKey);
    if (hit === undefined) {
      this.misses++;
      return undefined;
    }
    this.hits++;
    return hit;
  }

  /** Stores a load result unless an invalidation happened since `generation` was read. */
  set(hashKey: string, value: CacheValue, generation: number, now: number): void {
    if (now >= this.trustedUntil || generation !== this.generation) return;
    this.lru.set(hashKey, value, value === UNKNOWN ? { ttl: this.negativeTtlMs } : undefined);
    if (isKnown(value)) {
      addSecret(this.byKey, value.keyId, hashKey);
      addTo(this.byOrg, value.organizationId, hashKey);
    }
  }

  /** Drops every entry the change could affect. */
  apply(event: Invalidation): void {
    this.generation++;
    switch (event.kind) {
      case "keys":
        for (const id of event.keyIds) this.evict(this.byKey.get(id), () => true);
        break;
      case "member":
        this.evict(this.byOrg.get(event.organizationId), (e) => e.createdBy === event.userId);
        break;
      case "org":
        this.evict(this.byOrg.get(event.organizationId), () => true);
        break;
    }
  }

  /** Stops using the cache at once and drops everything (it may have missed invalidations). */
  distrust(): void {
    this.generation++;
    this.trustedUntil = 0;
    this.lru.clear();
  }

  /** Trusts the cache until `until` (epoch ms), unless already trusted for longer. */
  trustUntil(until: number): void {
    if (until > this.trustedUntil) this.trustedUntil = until;
  }

  get size(): number {
    return this.lru.size;
  }

  private evict(hashKeys: string | Set<string> | undefined, match: (e: VerifyEntry) => boolean): void {
    if (hashKeys === undefined) return;
    // Copy: deleting from the LRU disposes, which removes from this very set.
    for (const hashKey of typeof hashKeys === "string" ? [hashKeys] : [...hashKeys]) {
      const value = this.lru.peek(hashKey, { allowStale: true });
      if (value !== undefined && isKnown(value) && match(value)) this.lru.delete(hashKey);
    }
  }

  private unindex(hashKey: string, entry: VerifyEntry): void {
    removeSecret(this.byKey, entry.keyId, hashKey);
    removeFrom(this.byOrg, entry.organizationId, hashKey);
  }
}

function addTo(index: Map<string, Set<string>>, id: string, hashKey: string): void {
  const set = index.get(id);
  if (set === undefined) index.set(id, new Set([hashKey]));
  else set.add(hashKey);
}

function removeFrom(index: Map<string, Set<string>>, id: string, hashKey: string): void {
  const set = index.get(id);
  if (set === undefined) return;
  set.delete(hashKey);
  if (set.size === 0) index.delete(id);
}

function addSecret(index: Map<string, string | Set<string>>, keyId: string, hashKey: string): void {
  const held = index.get(keyId);
  if (held === undefined || held === hashKey) index.set(keyId, hashKey);
  else if (typeof held === "string") index.set(keyId, new Set([held, hashKey]));
  else held.add(hashKey);
}

function removeSecret(index: Map<string, string | Set<string>>, keyId: string, hashKey: string): void {
  const held = index.get(keyId);
  if (held === undefined) return;
  if (typeof held === "string") {
    if (held === hashKey) index.delete(keyId);
    return;
  }
  held.delete(hashKey);
  if (held.size === 0) index.delete(keyId);
}
