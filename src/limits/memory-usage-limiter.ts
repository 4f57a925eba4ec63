// Usage limits for one process (dev mode): the same windows, checks and
// all-or-nothing rule as the Redis limiter, with counters in a map. Nothing is
// shared or persisted, which is right for a single in-memory instance.
import type { LimitedKey, ManagedUsageLimiter, UsageOutcome } from "../keys/ports.js";
import { DAY_MS, MINUTE_MS, MonthClock, usageOutcome } from "./windows.js";

interface Counters {
  minute: number;
  minuteCount: number;
  day: number;
  dayCount: number;
  month: string;
  used: number;
}

export class MemoryUsageLimiter implements ManagedUsageLimiter {
  private readonly counters = new Map<string, Counters>();
  private readonly months = new MonthClock();

  consume(key: LimitedKey, cost: number, now: number): Promise<UsageOutcome> {
    const limits = key.limits;
    const minute = Math.floor(now / MINUTE_MS);
    const day = Math.floor(now / DAY_MS);
    const month = this.months.at(now);
    let c = this.counters.get(key.id);
    if (c === undefined) {
      c = { minute, minuteCount: 0, day, dayCount: 0, month, used: 0 };
      this.counters.set(key.id, c);
    }
    if (c.minute !== minute) {
      c.minute = minute;
      c.minuteCount = 0;
    }
    if (c.day !== day) {
      c.day = day;
      c.dayCount = 0;
    }
    if (c.month !== month) {
      c.month = month;
      c.used = 0;
    }
    const rpm = limits.requestsPerMinute;
    const rpd = limits.requestsPerDay;
    const credits = limits.monthlyCredits;
    if ((rpm > 0 && c.minuteCount >= rpm) || (rpd > 0 && c.dayCount >= rpd)) {
      return Promise.resolve(usageOutcome(limits, "rate_limited", c.minuteCount, c.dayCount, c.used, now));
    }
    if (credits > 0 && cost > 0 && c.used + cost > credits) {
      return Promise.resolve(usageOutcome(limits, "usage_exceeded", c.minuteCount, c.dayCount, c.used, now));
    }
    // Like the Redis script: only configured limits count.
    if (rpm > 0) c.minuteCount++;
    if (rpd > 0) c.dayCount++;
    if (credits > 0) c.used += cost;
    return Promise.resolve(usageOutcome(limits, "ok", c.minuteCount, c.dayCount, c.used, now));
  }

  start(): Promise<void> {
    return Promise.resolve();
  }

  flush(): Promise<void> {
    return Promise.resolve();
  }

  stop(): Promise<void> {
    return Promise.resolve();
  }
}
