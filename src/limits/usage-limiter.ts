// The port between VerifyKey and usage limits (rate limits, monthly credits).
import type { RateLimitState } from "../../gen/apikeys/v1/apikeys_pb.js";
import type { LimitsRecord } from "../keys/records.js";

/** What the limiter needs of a key (prebuilt per cached key, so a verification allocates none). */
export interface LimitedKey {
  readonly id: string;
  readonly limits: LimitsRecord;
}

export type UsageVerdict = "ok" | "rate_limited" | "usage_exceeded";

export interface UsageOutcome {
  verdict: UsageVerdict;
  /** Credits left this month, when the key has a monthly credit limit. */
  remainingCredits?: bigint;
  /** The tightest rate limit's state, when the key has rate limits. */
  rateLimit?: RateLimitState;
}

export interface UsageLimiter {
  /**
   * Counts one request against the key's rate limits and consumes `cost`
   * credits, atomically and across every instance: all or nothing. Called only
   * for keys that are otherwise valid and have limits.
   */
  consume(key: LimitedKey, cost: number, now: number): Promise<UsageOutcome>;
}

/** A limiter as the app runs it: started and stopped with the app. */
export interface ManagedUsageLimiter extends UsageLimiter {
  start(): Promise<void>;
  /** Persists the credits consumed so far (where the limiter keeps them durably). */
  flush(): Promise<void>;
  /** Flushes and releases connections. */
  stop(): Promise<void>;
}
