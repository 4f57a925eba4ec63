// The in-process verification cache: a secret's cache key (a SHA-256 of it,
// SecretHasher.cacheKey) → what VerifyKey needs, prepared once. An entry keeps
// only the few facts verification decides on and its answer already encoded,
// the bytes the gRPC transport sends; the ApiKey and Principal messages are
// not kept (at 100k cached keys they were most of the process's heap) and are
// decoded from those bytes only when something reads them (the Connect
// transport, ext_authz). Negative entries remember unknown hashes so floods of
// well-formed but unknown keys do not reach the database.
//
// Correctness rules:
// - Every invalidation bumps `generation`; a database load that started before
//   an invalidation does not populate the cache (it may hold pre-change state).
// - The cache is used only while trusted: until `trustedUntil`. A single
//   instance trusts it forever; with the Redis broadcast, trust is a lease the
//   instance renews by receiving its own pings through Redis, so an instance
//   that might be missing invalidations stops using its cache by itself.
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { LRUCache } from "lru-cache";
import {
  type ApiKey,
  KeyState,
  type Principal,
  type RateLimitState,
  VerifyCode,
  type VerifyKeyResponse,
  VerifyKeyResponseSchema,
} from "../../gen/apikeys/v1/apikeys_pb.js";
import type { LimitedKey } from "../limits/usage-limiter.js";
import type { Invalidation } from "./invalidation.js";
import { toApiKey, toPrincipal } from "./mapping.js";
import type { VerifyRecord } from "./records.js";

/**
 * Where an EncodedVerifyKeyResponse keeps its encoding: the gRPC transport
 * sends these bytes as they are (see src/transport/grpc-server.ts).
 */
export const ENCODING = Symbol("encoding");

/**
 * A VerifyKeyResponse held as its binary encoding. It reads as the message it
 * encodes, so the Connect transport and ext_authz use it like any other
 * (valid and code are fields; key and principal are decoded when read, the
 * last decoding remembered), and the gRPC transport sends its bytes without
 * encoding anything. Immutable: cached answers are shared by every caller.
 * Only where its bytes are kept may change (see AnswerSlabs), never what they say.
 */
export class EncodedVerifyKeyResponse {
  // On the prototype (below): one field less per cached key.
  declare readonly $typeName: VerifyKeyResponse["$typeName"];
  // Own accessor properties (see DECODED_FIELDS): protobuf-es tells whether a
  // message field is set by an own property, so prototype getters would read as unset.
  declare readonly key: ApiKey | undefined;
  declare readonly principal: Principal | undefined;
  readonly code: VerifyCode;
  [ENCODING]: Buffer;

  constructor(code: VerifyCode, encoding: Buffer) {
    this.code = code;
    this[ENCODING] = encoding;
    // The same accessor functions on every instance: V8 keeps them in the shared hidden class, not per object.
    Object.defineProperties(this, DECODED_FIELDS);
  }

  get valid(): boolean {
    return this.code === VerifyCode.VALID;
  }
}
Object.defineProperty(EncodedVerifyKeyResponse.prototype, "$typeName", { value: VerifyKeyResponseSchema.typeName });

/** An answer with usage data (built per call, never cached). */
class UsageResponse extends EncodedVerifyKeyResponse {
  readonly remainingCredits: bigint | undefined;
  readonly rateLimit: RateLimitState | undefined;

  constructor(code: VerifyCode, encoding: Buffer, remainingCredits: bigint | undefined, rateLimit: RateLimitState | undefined) {
    super(code, encoding);
    this.remainingCredits = remainingCredits;
    this.rateLimit = rateLimit;
  }
}

// The latest decodings, oldest first: ext_authz reads key and principal of
// every answer it allows, mostly of a few busy keys. Bounded, unlike keeping
// them with each answer (which is what cached keys no longer do). Decoded
// messages are frozen, as they are shared.
const DECODED_MAX = 128;
const decodings = new Map<EncodedVerifyKeyResponse, VerifyKeyResponse>();

function decoded(answer: EncodedVerifyKeyResponse): VerifyKeyResponse {
  let message = decodings.get(answer);
  if (message === undefined) {
    message = fromBinary(VerifyKeyResponseSchema, answer[ENCODING]);
    if (message.key !== undefined) Object.freeze(message.key);
    if (message.principal !== undefined) Object.freeze(message.principal);
    if (decodings.size >= DECODED_MAX) decodings.delete(decodings.keys().next().value!);
    decodings.set(answer, message);
  }
  return message;
}

const DECODED_FIELDS: PropertyDescriptorMap = {
  key: {
    enumerable: true,
    get(this: EncodedVerifyKeyResponse) {
      return decoded(this).key;
    },
  },
  principal: {
    enumerable: true,
    get(this: EncodedVerifyKeyResponse) {
      return decoded(this).principal;
    },
  },
};

/** An answer over toBinary's result (an exact-size ArrayBuffer of its own), without a copy. */
function encoded(code: VerifyCode, encoding: Uint8Array): EncodedVerifyKeyResponse {
  return new EncodedVerifyKeyResponse(code, Buffer.from(encoding.buffer, encoding.byteOffset, encoding.byteLength));
}

/** The scope rules of a key, shared by every entry with the same scopes. */
export interface ScopeRules {
  /** Exact scopes, and prefixes of "x:*" wildcards; all when the key has no scopes or "*". */
  readonly exact: readonly string[];
  readonly wildcards: readonly string[];
  readonly all: boolean;
}

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
}

export function buildEntry(record: VerifyRecord, now: number): VerifyEntry {
  const key = record.key;
  const code =
    key.revokeTime !== null ? VerifyCode.REVOKED : !record.orgEnabled || record.memberRole === null ? VerifyCode.DISABLED : VerifyCode.VALID;
  const response = create(VerifyKeyResponseSchema, {
    valid: code === VerifyCode.VALID,
    code,
    key: toApiKey(key, now),
    principal: toPrincipal(record),
  });
  const secretExpireTime = record.secretExpireTime;
  const expireTime = key.expireTime === null ? secretExpireTime : secretExpireTime === null ? key.expireTime : Math.min(key.expireTime, secretExpireTime);
  return {
    keyId: key.id,
    organizationId: shared(key.organizationId),
    createdBy: shared(key.createdBy),
    expireTime,
    limited: key.limits === null ? null : { id: key.id, limits: key.limits },
    scopes: scopeRules(key.scopes),
    answer: encoded(code, toBinary(VerifyKeyResponseSchema, response)),
    other: null,
  };
}

/**
 * The answer of a cached key for another code than its own (EXPIRED,
 * INSUFFICIENT_SCOPE): its own answer with the code changed, and the key's
 * state EXPIRED when that is the code.
 */
export function recode(answer: EncodedVerifyKeyResponse, code: VerifyCode): EncodedVerifyKeyResponse {
  const response = fromBinary(VerifyKeyResponseSchema, answer[ENCODING]);
  response.valid = code === VerifyCode.VALID;
  response.code = code;
  if (code === VerifyCode.EXPIRED && response.key !== undefined && response.key.state === KeyState.ACTIVE) {
    response.key.state = KeyState.EXPIRED;
  }
  return encoded(code, toBinary(VerifyKeyResponseSchema, response));
}

/** The encodings of `valid` and `code` alone, by code. */
const heads: Uint8Array[] = [];

/**
 * A VALID answer's key and principal with `code` and usage data. Built from
 * bytes: fields are encoded in field-number order, so the answer's head
 * (valid, code), its key and principal, and the usage fields concatenate to
 * exactly what encoding the whole message gives.
 */
export function withUsage(
  answer: EncodedVerifyKeyResponse,
  code: VerifyCode,
  remainingCredits: bigint | undefined,
  rateLimit: RateLimitState | undefined,
): EncodedVerifyKeyResponse {
  if (answer.code !== VerifyCode.VALID) throw new Error(`usage data on a ${VerifyCode[answer.code]} answer`);
  const head = (heads[code] ??= toBinary(VerifyKeyResponseSchema, create(VerifyKeyResponseSchema, { valid: code === VerifyCode.VALID, code })));
  const usage = create(VerifyKeyResponseSchema, { remainingCredits, rateLimit });
  const tail = toBinary(VerifyKeyResponseSchema, usage);
  const body = answer[ENCODING];
  const from = bodyStart(body);
  const bytes = Buffer.allocUnsafe(head.length + body.length - from + tail.length);
  bytes.set(head, 0);
  body.copy(bytes, head.length, from);
  bytes.set(tail, head.length + body.length - from);
  return new UsageResponse(code, bytes, usage.remainingCredits, usage.rateLimit);
}

/** Where an encoded VerifyKeyResponse's fields after `valid` (1) and `code` (2), both varints, begin. */
function bodyStart(bytes: Uint8Array): number {
  let i = 0;
  while (i < bytes.length && (bytes[i] === 0x08 || bytes[i] === 0x10)) {
    i++;
    while (bytes[i++] & 0x80);
  }
  return i;
}

// Equal strings and scope lists held once, not once per entry: a creator's
// keys share the organization and user ids, most keys share a few scope
// lists. Bounded: past the limit the table starts again (entries keep what
// they hold; only sharing with later ones is lost).
const SHARED_MAX = 50_000;
const sharedStrings = new Map<string, string>();
const sharedScopes = new Map<string, ScopeRules>();
const ALL_SCOPES: ScopeRules = Object.freeze({ exact: Object.freeze([]), wildcards: Object.freeze([]), all: true });

function shared(s: string): string {
  const held = sharedStrings.get(s);
  if (held !== undefined) return held;
  if (sharedStrings.size >= SHARED_MAX) sharedStrings.clear();
  sharedStrings.set(s, s);
  return s;
}

function scopeRules(scopes: readonly string[]): ScopeRules {
  if (scopes.length === 0) return ALL_SCOPES;
  const id = scopes.length === 1 ? scopes[0] : JSON.stringify(scopes);
  const held = sharedScopes.get(id);
  if (held !== undefined) return held;
  const exact: string[] = [];
  const wildcards: string[] = [];
  let all = false;
  for (const s of scopes) {
    if (s === "*") all = true;
    else if (s.endsWith(":*")) wildcards.push(s.slice(0, -1)); // "documents:*" → "documents:"
    else exact.push(s);
  }
  const rules = all ? ALL_SCOPES : Object.freeze({ exact: Object.freeze(exact), wildcards: Object.freeze(wildcards), all });
  if (sharedScopes.size >= SHARED_MAX) sharedScopes.clear();
  sharedScopes.set(id, rules);
  return rules;
}

/** Bytes per slab of AnswerSlabs; answers larger than SLAB_MAX_ANSWER keep a buffer of their own. */
const SLAB_BYTES = 16 * 1024;
const SLAB_MAX_ANSWER = 1024;

interface Slab {
  readonly bytes: Buffer;
  /** Bytes written; only the slab being filled grows. */
  used: number;
  /** Bytes of the answers below: those of cached entries. */
  live: number;
  answers: EncodedVerifyKeyResponse[];
}

/**
 * Where the answers of cached entries keep their bytes: slabs of 16 KB
 * shared by about 90 answers. An ArrayBuffer of its own costs an answer some
 * 300 bytes of heap and malloc on top of its ~180 bytes. A slab is freed when
 * no answer points into it; so that a few long-lived answers cannot pin
 * mostly empty slabs, a slab with less than half of its bytes live is
 * emptied: its remaining answers are copied to the slab being filled. Slabs
 * thus hold at most twice the live answers' bytes, plus the one being filled.
 * Whoever still holds an answer's previous bytes keeps a valid copy (bytes are
 * never rewritten), so moving needs no coordination with callers.
 */
class AnswerSlabs {
  private current: Slab | null = null;
  private readonly slabs = new Map<ArrayBufferLike, Slab>();

  /** Moves an answer's bytes into a slab, unless it is too large or already there. */
  adopt(answer: EncodedVerifyKeyResponse): void {
    const bytes = answer[ENCODING];
    if (bytes.length <= SLAB_MAX_ANSWER && !this.slabs.has(bytes.buffer)) this.put(answer, bytes);
  }

  /** The answer's entry left the cache. */
  release(answer: EncodedVerifyKeyResponse): void {
    const bytes = answer[ENCODING];
    const slab = this.slabs.get(bytes.buffer);
    if (slab === undefined) return;
    const answers = slab.answers;
    const i = answers.indexOf(answer);
    if (i === -1) return;
    const last = answers.pop()!;
    if (i < answers.length) answers[i] = last;
    slab.live -= bytes.length;
    if (slab !== this.current) this.compact(slab);
  }

  private put(answer: EncodedVerifyKeyResponse, bytes: Uint8Array): void {
    const slab = this.slabFor(bytes.length);
    const view = slab.bytes.subarray(slab.used, slab.used + bytes.length);
    view.set(bytes);
    slab.used += bytes.length;
    slab.live += bytes.length;
    slab.answers.push(answer);
    answer[ENCODING] = view;
  }

  private slabFor(length: number): Slab {
    const full = this.current;
    if (full !== null && full.used + length <= SLAB_BYTES) return full;
    const slab: Slab = { bytes: Buffer.allocUnsafeSlow(SLAB_BYTES), used: 0, live: 0, answers: [] };
    this.slabs.set(slab.bytes.buffer, slab);
    this.current = slab;
    // What the full slab still holds fits in the new one next to `length` bytes: less than half a slab, if anything moves.
    if (full !== null) this.compact(full);
    return slab;
  }

  /** Empties a slab that is no longer filled and less than half live. */
  private compact(slab: Slab): void {
    if (slab.live * 2 >= slab.used) return;
    this.slabs.delete(slab.bytes.buffer);
    const moving = slab.answers;
    slab.answers = [];
    for (const answer of moving) this.put(answer, answer[ENCODING]);
  }
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
    this.negativeTtlMs = options.negativeTtlMs;
  }

  isTrusted(now: number): boolean {
    return now < this.trustedUntil;
  }

  /** The cached value, or undefined on a miss (also whenever the cache is not trusted at `now`). */
  get(cacheKey: string, now: number): CacheValue | undefined {
    if (now >= this.trustedUntil) return undefined;
    this.clock = now;
    const hit = this.lru.get(cacheKey);
    if (hit === undefined) {
      this.misses++;
      return undefined;
    }
    this.hits++;
    return hit;
  }

  /** Stores a load result unless an invalidation happened since `generation` was read. */
  set(cacheKey: string, value: CacheValue, generation: number, now: number): void {
    if (now >= this.trustedUntil || generation !== this.generation) return;
    this.clock = now;
    this.lru.set(cacheKey, value, value === UNKNOWN ? { ttl: this.negativeTtlMs } : undefined);
    if (isKnown(value)) {
      addSecret(this.byKey, value.keyId, cacheKey);
      addTo(this.byOrg, value.organizationId, cacheKey);
      this.slabs.adopt(value.answer);
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
    // Fresh slabs first: releasing every answer one by one would move half of them around for nothing.
    this.slabs = new AnswerSlabs();
    this.lru.clear();
  }

  /** Trusts the cache until `until` (epoch ms), unless already trusted for longer. */
  trustUntil(until: number): void {
    if (until > this.trustedUntil) this.trustedUntil = until;
  }

  get size(): number {
    return this.lru.size;
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
