// WORKERS > 1: this process supervises that many server processes (node:cluster)
// sharing the gRPC and HTTP ports; connections are dealt to them in turn. Each
// worker is a whole instance — its own cache, Redis lease and broadcast id —
// so a revocation reaches the others exactly as it reaches other hosts, and
// the guarantee (docs/revocation.md) holds per worker.
//
// The supervisor serves nothing itself. It restarts a worker that dies after
// it was serving; a worker that dies before it could serve (bad
// configuration, no database) stops the whole service with its exit code, as
// a single process would. SIGTERM/SIGINT are passed to every worker, and the
// supervisor exits when they have: 0 if every one stopped cleanly.
//
// /metrics, answered by whichever worker took the connection, asks the
// supervisor, which sums every worker's metrics (prom-client's
// AggregatorRegistry): counters and histograms add up, and so do gauges
// (cache entries, pool connections, trusted caches).
import cluster, { type Worker } from "node:cluster";
import { AggregatorRegistry, type Registry } from "prom-client";
import type { Logger } from "./logger.js";

/** Worker → supervisor: it listens. */
const READY = "apikeys:ready";
/** Worker → supervisor: the metrics of every worker, please; supervisor → worker: here they are. */
const METRICS_REQUEST = "apikeys:metrics";
const METRICS_REPLY = "apikeys:metrics-reply";
/** A worker that died while serving is replaced, but not more often than this. */
const RESTART_DELAY_MS = 1000;
const METRICS_TIMEOUT_MS = 5000;

interface Message {
  type?: string;
  id?: number;
  text?: string;
  error?: string;
}

export const isWorker = (): boolean => cluster.isWorker;

/** The supervisor: forks `count` workers (this same program) and looks after them until they have stopped. */
export function supervise(count: number, logger: Logger, stopWithinMs: number): void {
  const aggregator = new AggregatorRegistry();
  const live = new Set<Worker>();
  const ready = new Set<Worker>();
  let stopping: string | null = null;
  let exitCode = 0;

  const fork = () => live.add(cluster.fork());
  cluster.on("message", (worker, message: Message) => {
    if (message?.type === READY) {
      ready.add(worker);
      if (ready.size === count) logger.info({ workers: count }, "all workers serving");
    } else if (message?.type === METRICS_REQUEST) {
      aggregator.clusterMetrics().then(
        (text) => worker.isConnected() && worker.send({ type: METRICS_REPLY, id: message.id, text }),
        (err: unknown) => worker.isConnected() && worker.send({ type: METRICS_REPLY, id: message.id, error: String(err) }),
      );
    }
  });
  cluster.on("exit", (worker, code, signal) => {
    live.delete(worker);
    const served = ready.delete(worker);
    if (stopping === null) {
      if (served) {
        logger.error({ pid: worker.process.pid, code, signal }, "worker died; starting another");
        setTimeout(() => stopping === null && fork(), RESTART_DELAY_MS).unref();
        return;
      }
      logger.error({ pid: worker.process.pid, code, signal }, "worker failed to start; stopping");
      exitCode = code || 1;
      stop("a worker failed to start");
    } else if (code !== 0) {
      exitCode ||= code || 1;
    }
    if (live.size === 0) process.exit(exitCode);
  });
  const stop = (why: string) => {
    if (stopping !== null) return;
    stopping = why;
    for (const worker of live) worker.process.kill("SIGTERM");
    // The workers bound their own shutdown; this is for one that hangs regardless.
    setTimeout(() => {
      logger.error("workers did not stop in time; exiting");
      process.exit(1);
    }, stopWithinMs + 2000).unref();
  };
  for (const signal of ["SIGTERM", "SIGINT"] as const) {
    process.on(signal, () => {
      logger.info({ signal }, "stopping workers");
      stop(signal);
    });
  }
  for (let i = 0; i < count; i++) fork();
}

/** In a worker: tell the supervisor it serves; stop when the supervisor is gone. */
export function workerServing(shutdown: (why: string) => void): void {
  process.send?.({ type: READY });
  process.once("disconnect", () => shutdown("supervisor gone"));
}

/** In a worker: let the supervisor read `registry` for the summed /metrics. */
export function shareMetrics(registry: Registry): void {
  AggregatorRegistry.setRegistries([registry]);
  // Constructing one installs prom-client's answer to the supervisor's requests in this process.
  new AggregatorRegistry();
}

let nextRequest = 0;

/** In a worker: every worker's metrics, summed, from the supervisor. */
export function clusterMetrics(): Promise<string> {
  const id = nextRequest++;
  return new Promise((resolve, reject) => {
    const onMessage = (message: Message) => {
      if (message?.type !== METRICS_REPLY || message.id !== id) return;
      done();
      if (message.error !== undefined) reject(new Error(message.error));
      else resolve(message.text ?? "");
    };
    const timer = setTimeout(() => {
      done();
      reject(new Error(`the supervisor did not answer in ${METRICS_TIMEOUT_MS} ms`));
    }, METRICS_TIMEOUT_MS);
    const done = () => {
      clearTimeout(timer);
      process.off("message", onMessage);
    };
    process.on("message", onMessage);
    process.send?.({ type: METRICS_REQUEST, id });
  });
}
