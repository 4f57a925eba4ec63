// Usage limits shared by every instance: counters in Redis, one scripted round
// trip per verification.
//
// The script checks every configured limit first and increments only if all
// pass, atomically (Redis runs a script alone), so concurrent verifications on
// any number of instances never over-admit, never lose an update and never
// drive credits below zero. A rejected request consumes nothing.
//
// Counters (the {keyId} hash tag puts a key's counters in one cluster slot):
//   apikeys:v1:rl:m:{<keyId>}:<epochMinute>  requests in the minute, expires after 2 minutes
//   apikeys:v1:rl:d:{<keyId>}:<epochDay>     requests in the UTC day, expires after 2 days
//   apikeys:v1:cr:{<keyId>}:<YYYYMM>         credits used in the UTC month, expires after 40 days
//
// Credits are durable; rate-limit windows are not (losing a minute's or a
// day's request counts only lets a key start that window afresh). A missing
// credits counter is never read as "nothing used": the script reports it
// unseeded, the limiter loads the month's usage from the ledger and reruns the
// script with it as the seed. Counters this instance changed are copied to the
// ledger every flush interval, so a Redis that loses its data loses at most the
// credits consumed since the last flush.
//
// Redis unavailable: the verification fails with UNAVAILABLE (fail closed), at
// once rather than after queueing (no offline queue, no retries, short
// timeouts). A limit that fails open would let any outage hand out unlimited
// requests and credits, which are what customers pay for.
import { unavailable } from "../keys/errors.js";
import { PeriodicFlusher } from "../keys/periodic-flusher.js";
import type { LimitsRecord } from "../keys/records.js";
import type { Logger } from "../logger.js";
import type { CreditLedger, CreditUsage, LimitedKey, ManagedUsageLimiter, UsageOutcome, UsageVerdict } from "../keys/ports.js";
import { type RedisClient, type RedisTarget, connectRedis, redisClient } from "../redis/connections.js";
import { DAY_MS, MINUTE_MS, MonthClock, usageOutcome } from "./windows.js";

const CREDITS_PREFIX = "apikeys:v1:cr:{";
/** "}:YYYYMM" closes a credits counter's name. */
const CREDITS_SUFFIX_LENGTH = 8;

export const COUNTER_KEYS = {
  minute: (keyId: string, epochMinute: number) => `apikeys:v1:rl:m:{${keyId}}:${epochMinute}`,
  day: (keyId: string, epochDay: number) => `apikeys:v1:rl:d:{${keyId}}:${epochDay}`,
  credits: (keyId: string, month: string) => `${CREDITS_PREFIX}${keyId}}:${month}`,
} as const;

// KEYS: minute counter, day counter, month's used credits.
// ARGV: requests per minute, requests per day, monthly credits (0 = not limited), cost,
//       seed for a missing credits counter ("" = none: report it unseeded instead).
// Reply: {-1} unseeded, or {verdict, minute count, day count, credits used}
//        with verdict 0 ok, 1 rate limited, 2 usage exceeded.
const CONSUME_LUA = `
local rpm = tonumber(ARGV[1])
local rpd = tonumber(ARGV[2])
local credits = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
local used = 0
if credits > 0 then
  local v = redis.call('GET', KEYS[3])
  if v then
    used = tonumber(v)
  elseif ARGV[5] ~= '' then
    used = tonumber(ARGV[5])
    redis.call('SET', KEYS[3], ARGV[5], 'EX', 3456000)
  else
    return {-1}
  end
end
local m = 0
if rpm > 0 then m = tonumber(redis.call('GET', KEYS[1]) or '0') end
local d = 0
if rpd > 0 then d = tonumber(redis.call('GET', KEYS[2]) or '0') end
if (rpm > 0 and m >= rpm) or (rpd > 0 and d >= rpd) then return {1, m, d, used} end
-- cost 0 ("who am I") passes even with nothing left, also when a lowered limit is below what was used
if credits > 0 and cost > 0 and used + cost > credits then return {2, m, d, used} end
if rpm > 0 then
  m = redis.call('INCR', KEYS[1])
  if m == 1 then redis.call('EXPIRE', KEYS[1], 120) end
end
if rpd > 0 then
  d = redis.call('INCR', KEYS[2])
  if d == 1 then redis.call('EXPIRE', KEYS[2], 172800) end
end
if credits > 0 and cost > 0 then used = redis.call('INCRBY', KEYS[3], cost) end
return {0, m, d, used}
`;

const UNSEEDED = -1;
const VERDICTS: readonly UsageVerdict[] = ["ok", "rate_limited", "usage_exceeded"];
/** Counters read from Redis at once when flushing. */
const FLUSH_CHUNK = 1000;

interface ConsumeCommand {
  apikeysConsume(
    minuteKey: string,
    dayKey: string,
    creditsKey: string,
    rpm: number,
    rpd: number,
    credits: number,
    cost: number,
    seed: string,
  ): Promise<number[]>;
}

export interface RedisUsageLimiterOptions {
  redis: RedisTarget;
  /** Owned by the limiter: closed by stop(). */
  ledger: CreditLedger;
  /** How often consumed credits are copied to the ledger. */
  flushIntervalMs: number;
  logger: Logger;
  /** How long one Redis command may take before the verification fails. */
  commandTimeoutMs?: number;
}

export class RedisUsageLimiter implements ManagedUsageLimiter {
  /** Credits counters seeded from the ledger, for metrics and tests. */
  seeds = 0;
  private readonly redis: RedisClient & ConsumeCommand;
  private readonly ledger: CreditLedger;
  private readonly logger: Logger;
  private readonly months = new MonthClock();
  /** Credits counters changed since the last flush, with their key's organization. */
  private dirty = new Map<string, string>();
  /** Ledger loads in flight, by credits counter: concurrent first uses share one. */
  private readonly seeding = new Map<string, Promise<number>>();
  private readonly flusher: PeriodicFlusher<Map<string, string>>;

  constructor(options: RedisUsageLimiterOptions) {
    this.ledger = options.ledger;
    this.flusher = new PeriodicFlusher(
      {
        take: () => {
          if (this.dirty.size === 0) return null;
          const batch = this.dirty;
          this.dirty = new Map();
          return batch;
        },
        write: (batch) => this.write(batch),
        putBack: (batch) => {
          for (const [k, organizationId] of batch) if (!this.dirty.has(k)) this.dirty.set(k, organizationId);
        },
        failed: (err, batch) => this.logger.warn({ err, counters: batch.size }, "saving consumed credits failed; will retry"),
      },
      options.flushIntervalMs,
    );
    this.logger = options.logger;
    this.redis = redisClient(options.redis, "limiter", { logger: options.logger, commandTimeoutMs: options.commandTimeoutMs }) as RedisClient & ConsumeCommand;
    // EVALSHA, falling back to EVAL when the server does not know the script (e.g. after a restart).
    this.redis.defineCommand("apikeysConsume", { numberOfKeys: 3, lua: CONSUME_LUA });
  }

  async start(): Promise<void> {
    await connectRedis(this.redis);
    this.flusher.start();
  }

  async consume(key: LimitedKey, cost: number, now: number): Promise<UsageOutcome> {
    const limits = key.limits;
    const id = key.id;
    const month = this.months.at(now);
    const minuteKey = COUNTER_KEYS.minute(id, Math.floor(now / MINUTE_MS));
    const dayKey = COUNTER_KEYS.day(id, Math.floor(now / DAY_MS));
    const creditsKey = COUNTER_KEYS.credits(id, month);
    let reply = await this.run(minuteKey, dayKey, creditsKey, limits, cost, "");
    if (reply[0] === UNSEEDED) {
      let load = this.seeding.get(creditsKey);
      if (load !== undefined) {
        reply = await this.run(minuteKey, dayKey, creditsKey, limits, cost, await this.seed(load));
      } else {
        load = this.ledger.load(key.organizationId, id, month);
        this.seeding.set(creditsKey, load);
        this.seeds++;
        try {
          reply = await this.run(minuteKey, dayKey, creditsKey, limits, cost, await this.seed(load));
        } finally {
          // Replies come back in the order the commands were sent: every verification
          // that found the counter unseeded has joined this load by the time this run
          // (which seeded it, or found it seeded) has returned.
          this.seeding.delete(creditsKey);
        }
      }
    }
    const verdict = VERDICTS[reply[0]];
    if (verdict === "ok" && cost > 0 && limits.monthlyCredits > 0) this.dirty.set(creditsKey, key.organizationId);
    return usageOutcome(limits, verdict, reply[1], reply[2], reply[3], now);
  }

  /**
   * Copies the credits counters changed before this call to the ledger. On
   * failure they are kept for the next flush (and the failure is logged).
   */
  flush(): Promise<void> {
    return this.flusher.flush();
  }

  /** Ledger batches written, for metrics and tests. */
  get flushes(): number {
    return this.flusher.writes;
  }

  async stop(): Promise<void> {
    await this.flusher.stop();
    this.redis.disconnect();
    await this.ledger.close();
  }

  private async run(
    minuteKey: string,
    dayKey: string,
    creditsKey: string,
    limits: LimitsRecord,
    cost: number,
    seed: string,
  ): Promise<number[]> {
    try {
      return await this.redis.apikeysConsume(
        minuteKey,
        dayKey,
        creditsKey,
        limits.requestsPerMinute,
        limits.requestsPerDay,
        limits.monthlyCredits,
        cost,
        seed,
      );
    } catch (err) {
      throw unavailable("redis", err);
    }
  }

  /** The seed argument from a ledger load (shared by concurrent first uses). */
  private async seed(load: Promise<number>): Promise<string> {
    try {
      return String(await load);
    } catch (err) {
      throw unavailable("database", err);
    }
  }

  private async write(dirty: ReadonlyMap<string, string>): Promise<void> {
    const batch = [...dirty.keys()];
    const entries: CreditUsage[] = [];
    for (let i = 0; i < batch.length; i += FLUSH_CHUNK) {
      const chunk = batch.slice(i, i + FLUSH_CHUNK);
      // One GET per counter, not an MGET: on a cluster each key's counters live in the slot of its
      // own hash tag, and an MGET across slots fails with CROSSSLOT. Auto-pipelining still sends a
      // chunk's GETs in one write per node.
      const values = await Promise.all(chunk.map((counter) => this.redis.get(counter)));
      values.forEach((value, j) => {
        // Gone from Redis (it lost its data): nothing newer than the ledger to save;
        // the next use seeds the counter from the ledger again.
        if (value === null) return;
        const counter = chunk[j];
        entries.push({
          organizationId: dirty.get(counter)!,
          keyId: counter.slice(CREDITS_PREFIX.length, -CREDITS_SUFFIX_LENGTH),
          month: counter.slice(-6),
          used: Number(value),
        });
      });
    }
    if (entries.length > 0) await this.ledger.save(entries);
  }
}
