// VerifyKey, the hot path. A cached answer does no I/O and no await: one
// SHA-256, one map lookup, a few comparisons. Only a cache miss checks the
// key's shape and checksum, and only a miss of a well-formed key returns a promise.
import { create } from "@bufbuild/protobuf";
import {
  type VerifyKeyRequest,
  type VerifyKeyResponse,
  VerifyKeyResponseSchema,
  VerifyCode,
} from "../../gen/apikeys/v1/apikeys_pb.js";
import { recode, withUsage } from "./answer.js";
import type { OrganizationScope } from "./call-context.js";
import { ApiError, invalidArgument, unavailable } from "./errors.js";
import type { SecretHasher } from "./hashing.js";
import { isWellFormed } from "./key-format.js";
import type { LastUsedTracker } from "./last-used.js";
import type { Membership } from "./membership.js";
import type { UnknownKeyBudget } from "./unknown-key-budget.js";
import type { Store, UsageLimiter, UsageOutcome } from "./ports.js";
import type { VerifyRecord } from "./records.js";
import { LIMITS, checkScopeBounds } from "./validation.js";
import { usageCode, verdict } from "./verification.js";
import { type CacheValue, UNKNOWN, type VerifyCache, type VerifyEntry, buildEntry, isKnown } from "./verify-cache.js";

export interface VerifierOptions {
  store: Store;
  hasher: SecretHasher;
  /** Null disables caching (every call asks the store). */
  cache: VerifyCache | null;
  lastUsed: LastUsedTracker;
  /** Enforces Limits; null when no key may have limits (e.g. unit tests). */
  limiter: UsageLimiter | null;
  /** Rules out unknown keys without a lookup (src/keys/membership.ts); null = off. */
  membership?: Membership | null;
  /** Bounds lookups that find nothing (src/keys/unknown-key-budget.ts); null = unbounded. */
  unknownBudget?: UnknownKeyBudget | null;
  now?: () => number;
}

/** Counters by outcome, read by metrics. Plain numbers: no allocation per call. */
export class VerifyStats {
  readonly byCode = new Float64Array(16);
  malformed = 0;
  /** Secrets moved from the previous pepper's hash to the current one (pepper rotation). */
  rehashed = 0;
}

// Frozen: shared by every caller, encoded once by the gRPC transport.
const NOT_FOUND: VerifyKeyResponse = Object.freeze(create(VerifyKeyResponseSchema, { valid: false, code: VerifyCode.NOT_FOUND }));

export class Verifier {
  private readonly store: Store;
  private readonly hasher: SecretHasher;
  private readonly cache: VerifyCache | null;
  private readonly lastUsed: LastUsedTracker;
  private readonly limiter: UsageLimiter | null;
  private readonly membership: Membership | null;
  private readonly unknownBudget: UnknownKeyBudget | null;
  private readonly now: () => number;
  readonly stats = new VerifyStats();

  constructor(options: VerifierOptions) {
    this.store = options.store;
    this.hasher = options.hasher;
    this.cache = options.cache;
    this.lastUsed = options.lastUsed;
    this.limiter = options.limiter;
    this.membership = options.membership ?? null;
    this.unknownBudget = options.unknownBudget ?? null;
    this.now = options.now ?? Date.now;
  }

  /**
   * `organizations`: the calling service's organizations (null = all). A key
   * of another organization is NOT_FOUND to it, exactly as a key that does not
   * exist (same answer, same bytes), and it is not used: no credits consumed,
   * no last-used time. So a gateway of one tenant learns nothing about, and
   * spends nothing of, another tenant's keys. `caller`: whose budget of
   * lookups for unknown keys a miss spends (see UnknownKeyBudget).
   */
  verify(req: VerifyKeyRequest, organizations: OrganizationScope | null = null, caller = ""): VerifyKeyResponse | Promise<VerifyKeyResponse> {
    const key = req.key;
    if (key.length === 0) throw invalidArgument("key", "is required");
    if (key.length > LIMITS.keyLength) throw invalidArgument("key", `must be at most ${LIMITS.keyLength} characters`);
    checkScopeBounds("required_scopes", req.requiredScopes);
    const cache = this.cache;
    if (cache === null) return this.malformed(key) ?? this.miss(null, req, organizations, caller);
    // The cache first: only well-formed keys are ever cached, so a hit needs no
    // shape or checksum check (a third of a cached call's own CPU); a miss gets one.
    const cacheKey = this.hasher.cacheKey(key);
    const now = this.now();
    const cached = cache.get(cacheKey, now);
    if (cached !== undefined) return this.answer(cached, req, now, organizations);
    return this.malformed(key) ?? this.miss(cacheKey, req, organizations, caller);
  }

  /**
   * A well-formed key the cache does not hold: NOT_FOUND at once when the
   * membership filter rules its hash out (no lookup, no promise), else the database.
   */
  private miss(
    cacheKey: string | null,
    req: VerifyKeyRequest,
    organizations: OrganizationScope | null,
    caller: string,
  ): VerifyKeyResponse | Promise<VerifyKeyResponse> {
    // The stored hash is the peppered HMAC; only misses pay for it.
    const hash = this.hasher.hash(req.key);
    const membership = this.membership;
    if (membership !== null && membership.excludes(hash, this.hasher.previousHash(req.key))) {
      this.stats.byCode[VerifyCode.NOT_FOUND]++;
      return NOT_FOUND;
    }
    return this.load(cacheKey, hash, req, organizations, caller);
  }

  /** NOT_FOUND for a key that cannot be one (wrong shape or checksum): no lookup, nothing cached. */
  private malformed(key: string): VerifyKeyResponse | null {
    if (isWellFormed(key)) return null;
    this.stats.malformed++;
    this.stats.byCode[VerifyCode.NOT_FOUND]++;
    return NOT_FOUND;
  }

  /** From the database; `cacheKey` is null when there is no cache (nothing to key). */
  private async load(
    cacheKey: string | null,
    hash: Buffer,
    req: VerifyKeyRequest,
    organizations: OrganizationScope | null,
    caller: string,
  ): Promise<VerifyKeyResponse> {
    const cache = this.cache;
    const generation = cache ? cache.generation : 0;
    const budget = this.unknownBudget;
    budget?.check(caller, this.now());
    let value: CacheValue;
    try {
      const record =
        (await this.store.findByHash(hash, cache?.generation)) ?? (await this.findUnderPreviousPepper(req.key, hash, cache?.generation));
      if (record === null) budget?.spend(caller, this.now());
      value = record === null ? UNKNOWN : buildEntry(record, this.now());
    } catch (err) {
      // Never "not found" because a dependency failed.
      throw err instanceof ApiError ? err : unavailable("database", err);
    }
    const now = this.now();
    if (cache !== null && cacheKey !== null) cache.set(cacheKey, value, generation, now);
    return this.answer(value, req, now, organizations);
  }

  /**
   * During a pepper rotation (see SecretHasher): a secret stored under the
   * previous pepper is found by its old hash and moved to the current one,
   * so each key costs the second lookup once. Only misses pay for it.
   */
  private async findUnderPreviousPepper(secret: string, hash: Buffer, freshness: number | undefined): Promise<VerifyRecord | null> {
    const previous = this.hasher.previousHash(secret);
    if (previous === null) return null;
    const record = await this.store.findByHash(previous, freshness);
    if (record !== null && (await this.store.replaceSecretHash(record.key.organizationId, record.key.id, previous, hash))) {
      this.stats.rehashed++;
      // Other instances still find it: their filters hold the previous hash, which they check too.
      this.membership?.addHash(hash);
    }
    return record;
  }

  private answer(
    entry: CacheValue,
    req: VerifyKeyRequest,
    now: number,
    organizations: OrganizationScope | null,
  ): VerifyKeyResponse | Promise<VerifyKeyResponse> {
    if (!isKnown(entry) || (organizations !== null && !organizations.allows(entry.organizationId))) {
      this.stats.byCode[VerifyCode.NOT_FOUND]++;
      return NOT_FOUND;
    }
    // The entry's answer carries the key's state as of load (see verification.ts).
    const code = verdict(entry.answer.code, entry.expireTime, entry.scopes, req.requiredScopes, now);
    // Usage limits apply only to keys that are otherwise valid, and cost keys without limits nothing.
    if (code === VerifyCode.VALID && entry.limited !== null && this.limiter !== null) {
      return this.limiter.consume(entry.limited, req.cost, now).then(
        (usage) => this.respond(entry, usageCode(usage.verdict), now, usage),
        (err) => {
          throw err instanceof ApiError ? err : unavailable("redis", err);
        },
      );
    }
    return this.respond(entry, code, now, undefined);
  }

  /**
   * The entry's prebuilt answer for `code`: a cached verification allocates
   * nothing, and the gRPC transport sends the answer's bytes as they are.
   * Answers with usage data are built per call, from the same bytes.
   */
  private respond(entry: VerifyEntry, code: VerifyCode, now: number, usage: UsageOutcome | undefined): VerifyKeyResponse {
    this.stats.byCode[code]++;
    if (code === VerifyCode.VALID) this.lastUsed.touch(entry.organizationId, entry.keyId, now);
    if (usage !== undefined) return withUsage(entry.answer, code, usage.remainingCredits, usage.rateLimit);
    const answer = entry.answer;
    if (answer.code === code) return answer;
    const other = entry.other;
    if (other !== null && other.code === code) return other;
    return (entry.other = recode(answer, code));
  }

}
