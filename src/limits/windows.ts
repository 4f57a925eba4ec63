// Window arithmetic and the outcome both limiters report. Windows are fixed and
// aligned to UTC: a minute window is an epoch minute, a day window a UTC day,
// credits belong to a calendar month (UTC). Fixed windows need one counter per
// window (one INCR), where a rolling window would need a log or two buckets.
import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { type RateLimitState, RateLimitStateSchema } from "../../gen/apikeys/v1/apikeys_pb.js";
import type { LimitsRecord } from "../keys/records.js";
import type { UsageOutcome, UsageVerdict } from "../keys/ports.js";

export const MINUTE_MS = 60_000;
export const DAY_MS = 86_400_000;

/**
 * The calendar month (UTC) of a time as "YYYYMM". Remembers the last month's
 * bounds, so the hot path builds a Date only when the month changes.
 */
export class MonthClock {
  private start = 0;
  private end = -1;
  private tag = "";

  at(now: number): string {
    if (now < this.start || now >= this.end) {
      const d = new Date(now);
      const year = d.getUTCFullYear();
      const month = d.getUTCMonth();
      this.start = Date.UTC(year, month, 1);
      this.end = Date.UTC(year, month + 1, 1);
      this.tag = `${year}${String(month + 1).padStart(2, "0")}`;
    }
    return this.tag;
  }
}

/**
 * Builds what VerifyKey reports from the counters as they stand after the
 * decision (incremented when the verdict is "ok", untouched otherwise).
 */
export function usageOutcome(
  limits: LimitsRecord,
  verdict: UsageVerdict,
  minuteCount: number,
  dayCount: number,
  usedCredits: number,
  now: number,
): UsageOutcome {
  const rpm = limits.requestsPerMinute;
  const rpd = limits.requestsPerDay;
  let rateLimit: RateLimitState | undefined;
  if (rpm > 0 || rpd > 0) {
    const minuteLeft = rpm > 0 ? Math.max(0, rpm - minuteCount) : Number.POSITIVE_INFINITY;
    const dayLeft = rpd > 0 ? Math.max(0, rpd - dayCount) : Number.POSITIVE_INFINITY;
    // The tightest limit is the one with fewer requests left; on a tie the day,
    // whose later reset is what a Retry-After must wait for.
    rateLimit =
      dayLeft <= minuteLeft
        ? create(RateLimitStateSchema, {
            limit: rpd,
            remaining: dayLeft,
            resetTime: timestampFromMs((Math.floor(now / DAY_MS) + 1) * DAY_MS),
          })
        : create(RateLimitStateSchema, {
            limit: rpm,
            remaining: minuteLeft,
            resetTime: timestampFromMs((Math.floor(now / MINUTE_MS) + 1) * MINUTE_MS),
          });
  }
  const credits = limits.monthlyCredits;
  return {
    verdict,
    remainingCredits: credits > 0 ? BigInt(Math.max(0, credits - usedCredits)) : undefined,
    rateLimit,
  };
}
