// The in-process verification cache: a secret's cache key (a SHA-256 of it,
// SecretHasher.cacheKey) → what VerifyKey needs, prepared once. Only the
// cache: entries, their bounds and indexes, and the trust lease. The rules
// live in verification.ts, the encoded answer in answer.ts. An entry keeps
// only the few facts verification decides on and its answer already encoded;
// the ApiKey and Principal messages are not kept (at 100k cached keys they
// were most of the process's heap). Negative entries remember unknown hashes
// so floods of well-formed but unknown keys do not reach the database; they
// have an LRU of their own (NEGATIVE_CACHE_MAX_ENTRIES), so a flood of forged
// keys never pushes real keys out.
//
// Correctness rules:
// - Every invalidation bumps `generation`; a database load that started before
//   an invalidation does not populate the cache (it may hold pre-change state).
// - The cache is used only while trusted: until `trustedUntil`, a deadline on
//   the monotonic clock (a wall-clock step must not extend it). A single
//   instance trusts it forever; with the broadcast, trust is a lease the
//   instance renews by receiving its own pings back through Redis, so an
//   instance that might be missing invalidations stops using its cache by
//   itself (see docs/revocation.md).
import { LRUCache } from "lru-cache";
import { AnswerSlabs, type EncodedVerifyKeyResponse, encodeAnswer } from "./answer.js";
import type { Membership } from "./membership.js";
import type { Invalidation, LimitedKey } from "./ports.js";
import type { VerifyRecord } from "./records.js";
import { type ScopeRules, expiryOf, scopeRules, stateAtLoad } from "./verification.js";

/**
 * A cached key: the few facts verification decides on, and its answer. The
 * record it was built from is not kept, nor any message: at 100k cached keys
 * every field held per entry is megabytes.
 */
export interface VerifyEntry {
  readonly keyId: string;
  readonly organizationId: string;
  readonly createdBy: string;
  /**
   * When the key or this particular secret (rotation grace) stops working, or
   * null; re-checked per call, unlike everything else here (state as of load).
   */
  readonly expireTime: number | null;
  /** The key as the limiter sees it; null when it has no limits. */
  readonly limited: LimitedKey | null;
  readonly scopes: ScopeRules;
  /**
   * The answer as of load time, without usage data: REVOKED, DISABLED (the
   * organization's API access is off, or the creator is no longer a member)
   * or VALID. Its code is the decision unless the key has expired since or
   * lacks a required scope.
   */
  readonly answer: EncodedVerifyKeyResponse;
  /** The answer for another code (EXPIRED, INSUFFICIENT_SCOPE), built on first use; null until then. */
  other: EncodedVerifyKeyResponse | null;
}

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
  /** Unknown keys remembered, at most; 0 = none. Apart from maxEntries, so unknown keys never evict known ones. */
  negativeMaxEntries?: number;
  /** The clock of the trust lease: monotonic milliseconds (performance.now); tests pass a fake one. */
  monotonicNow?: () => number;
}

const performanceNow = (): number => performance.now();

export function buildEntry(record: VerifyRecord, now: number): VerifyEntry {
  const key = record.key;
  return {
    keyId: key.id,
    organizationId: shared(key.organizationId),
    createdBy: shared(key.createdBy),
    expireTime: expiryOf(record),
    limited: key.limits === null ? null : { id: key.id, organizationId: key.organizationId, limits: key.limits },
    scopes: sharedScopeRules(key.scopes),
    answer: encodeAnswer(record, stateAtLoad(record), now),
    other: null,
  };
}

// Equal strings and scope lists held once, not once per entry: a creator's
// keys share the organization and user ids, most keys share a few scope
// lists. Bounded: past the limit the table starts again (entries keep what
// they hold; only sharing with later ones is lost).
const SHARED_MAX = 50_000;
const sharedStrings = new Map<string, string>();
const sharedScopes = new Map<string, ScopeRules>();

function shared(s: string): string {
  const held = sharedStrings.get(s);
  if (held !== undefined) return held;
  if (sharedStrings.size >= SHARED_MAX) sharedStrings.clear();
  sharedStrings.set(s, s);
  return s;
}

function sharedScopeRules(scopes: readonly string[]): ScopeRules {
  if (scopes.length === 0) return scopeRules(scopes);
  const id = scopes.length === 1 ? scopes[0] : JSON.stringify(scopes);
  const held = sharedScopes.get(id);
  if (held !== undefined) return held;
  const rules = scopeRules(scopes);
  if (sharedScopes.size >= SHARED_MAX) sharedScopes.clear();
  sharedScopes.set(id, rules);
  return rules;
}

export class VerifyCache {
  /** Bumped by every invalidation; see the file comment. */
  generation = 0;
  /** On the monotonic clock (`monotonicNow`), not the `now` callers pass: that one is wall-clock time. */
  private trustedUntil = Number.POSITIVE_INFINITY;
  private readonly monotonicNow: () => number;
  private readonly lru: LRUCache<string, CacheValue>;
  private readonly negative: LRUCache<string, true> | null;
  /** Told about new secrets and about missed broadcasts (src/keys/membership.ts); null without a filter. */
  membership: Membership | null = null;
  // Secondary indexes of positive entries, so an invalidation touches only the
  // entries it concerns instead of scanning the cache (which at 100k entries
  // blocked the event loop for tens of milliseconds on every instance). Kept
  // in step with the LRU through its dispose callback. A key almost always has
  // one live secret, so byKey holds a plain hash until a second one appears.
  private readonly byKey = new Map<string, string | Set<string>>();
  private readonly byOrg = new Map<string, Set<string>>();
  private slabs = new AnswerSlabs();
  /**
   * The lru-cache's clock for TTLs: the `now` of the latest get or set. Its own
   * clock (performance.now, re-read at most once per ttlResolution) armed a
   * timer every millisecond under load, a cost per call on the hot path; the
   * caller reads the time anyway.
   */
  private clock = 0;
  hits = 0;
  misses = 0;

  constructor(options: VerifyCacheOptions) {
    this.lru = new LRUCache({
      max: options.maxEntries,
      ttl: options.ttlMs,
      ttlResolution: 0,
      perf: { now: () => this.clock },
      updateAgeOnGet: false,
      dispose: (value, cacheKey) => {
        if (!isKnown(value)) return;
        this.unindex(cacheKey, value);
        this.slabs.release(value.answer);
      },
    });
    const negativeMax = options.negativeMaxEntries ?? Math.max(1, Math.floor(options.maxEntries / 10));
    this.negative =
      negativeMax > 0
        ? new LRUCache({ max: negativeMax, ttl: options.negativeTtlMs, ttlResolution: 0, perf: { now: () => this.clock }, updateAgeOnGet: false })
        : null;
    this.monotonicNow = options.monotonicNow ?? performanceNow;
  }

  isTrusted(): boolean {
    return this.monotonicNow() < this.trustedUntil;
  }

  /** The cached value, or undefined on a miss (also whenever the cache is not trusted now). `now` is wall-clock time, for TTLs. */
  get(cacheKey: string, now: number): CacheValue | undefined {
    if (this.monotonicNow() >= this.trustedUntil) return undefined;
    this.clock = now;
    const hit = this.lru.get(cacheKey) ?? (this.negative?.get(cacheKey) === true ? UNKNOWN : undefined);
    if (hit === undefined) {
      this.misses++;
      return undefined;
    }
    this.hits++;
    return hit;
  }

  /** Stores a load result unless an invalidation happened since `generation` was read. */
  set(cacheKey: string, value: CacheValue, generation: number, now: number): void {
    if (generation !== this.generation || this.monotonicNow() >= this.trustedUntil) return;
    this.clock = now;
    if (!isKnown(value)) {
      this.negative?.set(cacheKey, true);
      return;
    }
    this.lru.set(cacheKey, value);
    addSecret(this.byKey, value.keyId, cacheKey);
    addTo(this.byOrg, value.organizationId, cacheKey);
    this.slabs.adopt(value.answer);
  }

  /** Drops every entry the change could affect. */
  apply(event: Invalidation): void {
    // Bumped for "created" too: a lookup after it must see the new secret (a replica read asks for this freshness).
    this.generation++;
    if (event.kind === "created") {
      // Nothing cached can be stale because of a secret nobody knew before. Only the membership filter learns something.
      this.membership?.addMarks(event.marks);
      return;
    }
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
    // Fresh slabs first: releasing every answer one by one would move half of them around for nothing.
    this.slabs = new AnswerSlabs();
    this.lru.clear();
    this.negative?.clear();
    this.membership?.lost();
  }

  /** Trusts the cache until `until` (monotonic ms, see monotonicNow), unless already trusted for longer. */
  trustUntil(until: number): void {
    if (until > this.trustedUntil) this.trustedUntil = until;
  }

  get size(): number {
    return this.lru.size + (this.negative?.size ?? 0);
  }

  /** Unknown keys remembered. */
  get negativeSize(): number {
    return this.negative?.size ?? 0;
  }

  private evict(cacheKeys: string | Set<string> | undefined, match: (e: VerifyEntry) => boolean): void {
    if (cacheKeys === undefined) return;
    // Copy: deleting from the LRU disposes, which removes from this very set.
    for (const cacheKey of typeof cacheKeys === "string" ? [cacheKeys] : [...cacheKeys]) {
      const value = this.lru.peek(cacheKey, { allowStale: true });
      if (value !== undefined && isKnown(value) && match(value)) this.lru.delete(cacheKey);
    }
  }

  private unindex(cacheKey: string, entry: VerifyEntry): void {
    removeSecret(this.byKey, entry.keyId, cacheKey);
    removeFrom(this.byOrg, entry.organizationId, cacheKey);
  }
}

function addTo(index: Map<string, Set<string>>, id: string, cacheKey: string): void {
  const set = index.get(id);
  if (set === undefined) index.set(id, new Set([cacheKey]));
  else set.add(cacheKey);
}

function removeFrom(index: Map<string, Set<string>>, id: string, cacheKey: string): void {
  const set = index.get(id);
  if (set === undefined) return;
  set.delete(cacheKey);
  if (set.size === 0) index.delete(id);
}

function addSecret(index: Map<string, string | Set<string>>, keyId: string, cacheKey: string): void {
  const held = index.get(keyId);
  if (held === undefined || held === cacheKey) index.set(keyId, cacheKey);
  else if (typeof held === "string") index.set(keyId, new Set([held, cacheKey]));
  else held.add(cacheKey);
}

function removeSecret(index: Map<string, string | Set<string>>, keyId: string, cacheKey: string): void {
  const held = index.get(keyId);
  if (held === undefined) return;
  if (typeof held === "string") {
    if (held === cacheKey) index.delete(keyId);
    return;
  }
  held.delete(cacheKey);
  if (held.size === 0) index.delete(keyId);
}
