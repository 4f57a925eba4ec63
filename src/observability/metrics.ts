// Prometheus metrics (prom-client), served at HTTP_PORT/metrics. Two kinds:
// - RPC latency, recorded as each call finishes into a series of plain bucket
//   counters bound once per method, code and protocol (RpcHistogram below):
//   a few array writes per call, where prom-client's Histogram hashes its
//   labels on every observation;
// - numbers the domain already counts as plain fields (verify outcomes, cache,
//   broadcast, last-used, pool), read in collect() when Prometheus scrapes, so
//   they add nothing to the hot path.
// Label values are method names, status and outcome names and the protocol:
// never anything a caller sends.
import { Counter, Gauge, Registry, collectDefaultMetrics } from "prom-client";
import { VerifyCodeSchema } from "../../gen/apikeys/v1/apikeys_pb.js";
import type { RedisBroadcast } from "../broadcast/redis-broadcast.js";
import type { LastUsedTracker } from "../keys/last-used.js";
import type { Membership } from "../keys/membership.js";
import type { UnknownKeyBudget } from "../keys/unknown-key-budget.js";
import type { Verifier } from "../keys/verifier.js";
import type { VerifyCache } from "../keys/verify-cache.js";
import type { PoolStats } from "../keys/ports.js";
import type { HttpEndpoint } from "../transport/http-server.js";
import type { Refusals } from "../transport/refusals.js";
import { statusName } from "./grpc-status.js";
import { clusterMetrics, isWorker, shareMetrics } from "../workers.js";

export interface MetricsSources {
  verifier: Pick<Verifier, "stats">;
  cache: VerifyCache | null;
  membership?: Pick<Membership, "stats" | "ready" | "bytes"> | null;
  unknownBudget?: Pick<UnknownKeyBudget, "spent" | "refused"> | null;
  broadcast: Pick<RedisBroadcast, "stats"> | null;
  lastUsed: Pick<LastUsedTracker, "writes">;
  /** The database connection pool, when the store has one. */
  pool: { poolStats(): PoolStats } | null;
  /** What the transports refused (connection caps, timeouts, Watch streams). */
  refusals: Refusals;
}

export type Protocol = "grpc" | "connect";

type Observe = { observe(value: number): void };

/** The histogram children of one method, by protocol and then by status code (created on first use). */
interface MethodSeries {
  service: string;
  method: string;
  grpc: Observe[];
  connect: Observe[];
}

// Verification is answered from memory in well under a millisecond; management calls take milliseconds.
const RPC_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

export class Metrics {
  readonly registry = new Registry();
  private readonly rpcDuration: RpcHistogram;
  private readonly byPath = new Map<string, MethodSeries>();

  constructor(sources: MetricsSources) {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry });
    if (isWorker()) shareMetrics(this.registry);
    this.rpcDuration = new RpcHistogram(
      "apikeys_rpc_duration_seconds",
      "Time to answer an RPC, by method, gRPC status code and protocol (grpc = gRPC port, connect = Connect/gRPC-Web on the HTTP port). _count is the number of calls.",
    );
    this.registry.registerMetric(this.rpcDuration as never);

    const { verifier, cache, broadcast, lastUsed, pool, refusals } = sources;
    new Counter({
      name: "apikeys_refused_total",
      help: "What the ports refused to take on: HTTP connections over HTTP_MAX_CONNECTIONS, HTTP requests too slow to arrive, Health.Watch streams over HEALTH_MAX_WATCHES.",
      labelNames: ["reason"],
      registers,
      collect() {
        this.reset();
        this.inc({ reason: "http_connection_limit" }, refusals.httpConnectionLimit);
        this.inc({ reason: "http_timeout" }, refusals.httpTimeout);
        this.inc({ reason: "health_watch_limit" }, refusals.healthWatchLimit);
      },
    });
    const outcomes = VerifyCodeSchema.values.filter((v) => v.number !== 0);
    new Counter({
      name: "apikeys_verify_outcomes_total",
      help: "VerifyKey answers by outcome code (VALID, NOT_FOUND, REVOKED, ...).",
      labelNames: ["code"],
      registers,
      collect() {
        this.reset();
        for (const v of outcomes) this.inc({ code: v.localName }, verifier.stats.byCode[v.number]);
      },
    });
    counter(registers, "apikeys_verify_malformed_keys_total", "Keys rejected by shape or checksum, without a lookup.", () => verifier.stats.malformed);
    counter(registers, "apikeys_last_used_writes_total", "Batches of last-used times written to the database.", () => lastUsed.writes);
    if (cache) {
      counter(registers, "apikeys_verify_cache_hits_total", "Verifications answered from the in-process cache.", () => cache.hits);
      counter(registers, "apikeys_verify_cache_misses_total", "Verifications the cache could not answer.", () => cache.misses);
      gauge(registers, "apikeys_verify_cache_entries", "Entries in the verification cache (known and unknown keys).", () => cache.size);
      gauge(registers, "apikeys_verify_cache_trusted", "1 while this instance may answer from its cache (its Redis lease is current).", () =>
        cache.isTrusted() ? 1 : 0,
      );
    }
    const { membership, unknownBudget } = sources;
    if (membership) {
      const m = membership.stats;
      counter(registers, "apikeys_membership_ruled_out_total", "Unknown keys answered from the membership filter, without a database lookup.", () => m.ruledOut);
      gauge(registers, "apikeys_membership_ready", "1 while the membership filter is loaded and in use.", () => (membership.ready ? 1 : 0));
      gauge(registers, "apikeys_membership_bytes", "Memory of the membership filter.", () => membership.bytes);
      gauge(registers, "apikeys_membership_load_seconds", "How long the last load of the membership filter took.", () => m.lastLoadMs / 1000);
    }
    if (cache) gauge(registers, "apikeys_verify_cache_unknown_entries", "Unknown keys the cache remembers (NEGATIVE_CACHE_MAX_ENTRIES at most).", () => cache.negativeSize);
    if (unknownBudget) {
      counter(registers, "apikeys_unknown_key_lookups_total", "Database lookups that found no key.", () => unknownBudget.spent);
      counter(registers, "apikeys_unknown_key_refused_total", "Cache misses refused (RESOURCE_EXHAUSTED) because a caller or all callers used up the unknown-key budget.", () => unknownBudget.refused);
    }
    if (broadcast) {
      const s = broadcast.stats;
      counter(registers, "apikeys_broadcast_published_total", "Invalidations published to other instances.", () => s.published);
      counter(registers, "apikeys_broadcast_ack_timeouts_total", "Invalidations not acknowledged by every instance in time (the cache lease covered them).", () => s.acksTimedOut);
      counter(registers, "apikeys_broadcast_received_total", "Invalidations received from Redis.", () => s.received);
      counter(registers, "apikeys_broadcast_reconnects_total", "Times the Redis subscriber reconnected (the cache was emptied).", () => s.reconnects);
      counter(registers, "apikeys_broadcast_rejected_total", "Broadcast messages rejected by validation (bad signature or shape); each emptied the cache.", () => s.rejected);
      counter(registers, "apikeys_broadcast_subscription_lost_total", "Times the broadcast subscription was lost (the cache was unused until subscribed again).", () => s.lost);
      gauge(registers, "apikeys_broadcast_last_waited_for", "Other instances the last invalidation waited for (those whose cache lease could still run).", () => s.lastWaitedFor);
      gauge(registers, "apikeys_broadcast_last_ack_seconds", "Time from publishing the last invalidation to every instance's acknowledgement.", () => s.lastAckMs / 1000);
      gauge(registers, "apikeys_broadcast_last_receivers", "Instances (this one included) the last invalidation reached; each must acknowledge it.", () => s.lastReceivers);
    }
    if (pool) {
      new Gauge({
        name: "apikeys_db_pool_connections",
        help: "Open database connections by state (in_use, idle).",
        labelNames: ["state"],
        registers,
        collect() {
          const p = pool.poolStats();
          this.set({ state: "in_use" }, p.inUse);
          this.set({ state: "idle" }, p.idle);
        },
      });
      gauge(registers, "apikeys_db_pool_max_connections", "The database pool's connection limit.", () => pool.poolStats().max);
      gauge(registers, "apikeys_db_pool_waiting", "Queries waiting for a free database connection.", () => pool.poolStats().waiting);
      counter(registers, "apikeys_db_deadlocks_total", "Transactions the database rolled back as a deadlock's victim (each is run again, up to 3 times).", () => pool.poolStats().deadlocks);
    }
  }

  /**
   * Records a finished RPC; `path` is "/package.Service/Method". Once a series
   * exists this is two lookups and prom-client's observe (which itself hashes the
   * bound labels, about 0.4 µs: the whole cost metrics add to a verification).
   */
  recordRpc(path: string, code: number, protocol: Protocol, seconds: number): void {
    const series = this.byPath.get(path) ?? this.addMethod(path);
    const children = series[protocol];
    (children[code] ??= this.rpcDuration.series({ service: series.service, method: series.method, code: statusName(code), protocol })).observe(
      seconds,
    );
  }

  /** GET /metrics in the Prometheus text format. */
  endpoint(): HttpEndpoint {
    return (req, res) => {
      if (req.url !== "/metrics") return false;
      // Under a supervisor (WORKERS > 1) every worker's, summed; else this process's.
      (isWorker() ? clusterMetrics() : this.registry.metrics()).then(
        (text) => res.writeHead(200, { "content-type": this.registry.contentType }).end(text),
        (err: unknown) => res.writeHead(500, { "content-type": "text/plain" }).end(`metrics failed: ${err instanceof Error ? err.message : String(err)}\n`),
      );
      return true;
    };
  }

  // Paths come from the transports' own method tables, so there are as many series as methods.
  private addMethod(path: string): MethodSeries {
    const slash = path.lastIndexOf("/");
    const series: MethodSeries = { service: path.slice(1, slash), method: path.slice(slash + 1), grpc: [], connect: [] };
    this.byPath.set(path, series);
    return series;
  }
}

/** One label combination's buckets (not cumulative: they are summed when scraped), sum and count. */
class Series implements Observe {
  readonly buckets = new Float64Array(RPC_BUCKETS.length + 1); // the last one is +Inf
  sum = 0;
  count = 0;

  constructor(readonly labels: Readonly<Record<string, string>>) {}

  observe(seconds: number): void {
    let i = 0;
    while (i < RPC_BUCKETS.length && seconds > RPC_BUCKETS[i]) i++;
    this.buckets[i]++;
    this.sum += seconds;
    this.count++;
  }
}

/**
 * A Prometheus histogram for the registry (prom-client formats what get()
 * returns), whose observations cost a few array writes and no allocation.
 */
class RpcHistogram {
  readonly type = "histogram";
  private readonly all: Series[] = [];

  constructor(
    readonly name: string,
    readonly help: string,
  ) {}

  series(labels: Record<string, string>): Series {
    const s = new Series(labels);
    this.all.push(s);
    return s;
  }

  get() {
    const values: { metricName: string; labels: Record<string, string | number>; value: number }[] = [];
    for (const s of this.all) {
      let cumulative = 0;
      for (let i = 0; i <= RPC_BUCKETS.length; i++) {
        cumulative += s.buckets[i];
        const le = i < RPC_BUCKETS.length ? RPC_BUCKETS[i] : "+Inf";
        values.push({ metricName: `${this.name}_bucket`, labels: { le, ...s.labels }, value: cumulative });
      }
      values.push({ metricName: `${this.name}_sum`, labels: s.labels, value: s.sum });
      values.push({ metricName: `${this.name}_count`, labels: s.labels, value: s.count });
    }
    return { name: this.name, help: this.help, type: this.type, values, aggregator: "sum" };
  }

  reset(): void {
    this.all.length = 0;
  }
}

function counter(registers: Registry[], name: string, help: string, read: () => number): void {
  new Counter({
    name,
    help,
    registers,
    collect() {
      // The value read is already the running total; prom-client counters only move by inc().
      this.reset();
      this.inc(read());
    },
  });
}

function gauge(registers: Registry[], name: string, help: string, read: () => number): void {
  new Gauge({
    name,
    help,
    registers,
    collect() {
      this.set(read());
    },
  });
}
