// A bound on database lookups that find nothing (issue 20: forged keys are
// well-formed by design, the checksum is public). Each lookup that finds no
// key spends a token of the caller's bucket and of the shared one; while either
// is empty, that caller's cache misses are refused with RESOURCE_EXHAUSTED
// instead of reaching the database. Known keys in the cache, and unknown keys
// the membership filter or the negative cache answers, cost nothing and are
// never refused. See docs/security.md, "Floods of forged keys".
import { ApiError, Status } from "./errors.js";

export interface UnknownKeyBudgetOptions {
  /** Lookups finding nothing, per second, all callers together (the burst is one second's worth). */
  perSecond: number;
  /** The same, per caller. */
  perCallerPerSecond: number;
}

class Bucket {
  tokens: number;
  at: number;

  constructor(
    readonly rate: number,
    now: number,
  ) {
    this.tokens = rate;
    this.at = now;
  }

  /** Tokens now (refilled at `rate` per second, up to one second's worth). */
  level(now: number): number {
    if (now > this.at) {
      this.tokens = Math.min(this.rate, this.tokens + ((now - this.at) * this.rate) / 1000);
      this.at = now;
    }
    return this.tokens;
  }
}

export class UnknownKeyBudget {
  /** Lookups that found nothing, and cache misses refused because a bucket was empty. */
  spent = 0;
  refused = 0;
  private readonly perCaller: number;
  private readonly total: Bucket;
  // Keyed by configured caller names: as many as CALLERS has entries.
  private readonly callers = new Map<string, Bucket>();

  constructor(options: UnknownKeyBudgetOptions) {
    this.perCaller = options.perCallerPerSecond;
    this.total = new Bucket(options.perSecond, 0);
  }

  /** Throws RESOURCE_EXHAUSTED when the caller, or all callers together, used up the budget. */
  check(caller: string, now: number): void {
    if (this.total.level(now) >= 1 && this.bucket(caller, now).level(now) >= 1) return;
    this.refused++;
    throw new ApiError(
      Status.RESOURCE_EXHAUSTED,
      "UNKNOWN_KEY_BUDGET",
      "too many verifications of unknown keys; keys in the cache are still answered, others after a pause",
      { caller },
    );
  }

  /** A lookup found no key. */
  spend(caller: string, now: number): void {
    this.spent++;
    this.total.level(now);
    this.total.tokens -= 1;
    const bucket = this.bucket(caller, now);
    bucket.level(now);
    bucket.tokens -= 1;
  }

  private bucket(caller: string, now: number): Bucket {
    let bucket = this.callers.get(caller);
    if (bucket === undefined) {
      bucket = new Bucket(this.perCaller, now);
      this.callers.set(caller, bucket);
    }
    return bucket;
  }
}
