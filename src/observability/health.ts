// Health, one state for every probe: gRPC health checking (grpc.health.v1.Health,
// Check and Watch, from the grpc-js project's grpc-health-check) and the HTTP
// probes /healthz (liveness) and /readyz (readiness). The server is SERVING while
// the database answers and shutdown has not begun; the database is pinged on a
// timer rather than per probe, so probes cost nothing and all of them agree.
import type * as grpc from "@grpc/grpc-js";
import { HealthImplementation, type ServingStatus } from "grpc-health-check";
import type { Logger } from "../logger.js";
import type { Store } from "../keys/ports.js";
import type { HttpEndpoint } from "../transport/http-server.js";
import type { Refusals } from "../transport/refusals.js";
import { Status } from "../keys/errors.js";

export interface HealthOptions {
  store: Pick<Store, "ping">;
  /** Fully-qualified names of the services on the gRPC port; "" (the whole server) is always reported. */
  services: string[];
  logger: Logger;
  /** How often the database is pinged; a ping that takes longer counts as a failure. */
  pollMs: number;
  /** Watch streams open at once, at most (each holds a stream and memory for as long as the client likes). */
  maxWatches: number;
  refusals: Refusals;
}

type WatchCall = grpc.ServerWritableStream<unknown, unknown>;

export class Health {
  private readonly grpcHealth: HealthImplementation;
  private readonly names: string[];
  private readonly store: Pick<Store, "ping">;
  private readonly logger: Logger;
  private readonly pollMs: number;
  /** Null until the first ping answers. */
  private databaseUp: boolean | null = null;
  private shuttingDown = false;
  /** What Check and Watch currently report (NOT_SERVING until the first ping answers). */
  private published: ServingStatus = "NOT_SERVING";
  private timer: NodeJS.Timeout | null = null;
  private readonly watches = new Set<WatchCall>();
  private readonly maxWatches: number;
  private readonly refusals: Refusals;

  constructor(options: HealthOptions) {
    this.store = options.store;
    this.logger = options.logger;
    this.pollMs = options.pollMs;
    this.maxWatches = options.maxWatches;
    this.refusals = options.refusals;
    this.names = ["", ...options.services];
    this.grpcHealth = new HealthImplementation(Object.fromEntries(this.names.map((name) => [name, this.published])));
  }

  get serving(): boolean {
    return this.databaseUp === true && !this.shuttingDown;
  }

  addToServer(server: grpc.Server): void {
    // Watch streams are kept so that shutdown can end them: an open stream would
    // otherwise hold tryShutdown until the grace period forces it.
    this.grpcHealth.addToServer({
      addService: (definition, handlers) => {
        const watch = handlers.watch as (call: WatchCall) => void;
        server.addService(definition as grpc.ServiceDefinition, {
          ...handlers,
          watch: (call: WatchCall) => {
            if (this.watches.size >= this.maxWatches) {
              this.refusals.healthWatchLimit++;
              call.emit("error", { code: Status.RESOURCE_EXHAUSTED, details: `too many Health.Watch streams open (HEALTH_MAX_WATCHES=${this.maxWatches}); use Check, or retry later` });
              return;
            }
            this.watches.add(call);
            const forget = () => this.watches.delete(call);
            call.once("cancelled", forget);
            call.once("finish", forget);
            watch(call);
          },
        } as grpc.UntypedServiceImplementation);
      },
    });
  }

  /** Pings the database once (so the first answer is known before the ports open), then every pollMs. */
  async start(): Promise<void> {
    await this.check();
    this.schedule();
  }

  /** NOT_SERVING from now on; Watch streams hear it, then end so they do not hold the drain. */
  beginShutdown(): void {
    this.shuttingDown = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.publish();
    for (const call of this.watches) call.end();
  }

  /** /healthz: the process is up and serving HTTP. /readyz: it should get traffic. */
  endpoints(): HttpEndpoint[] {
    return [
      (req, res) => {
        if (req.url !== "/healthz") return false;
        res.writeHead(200, { "content-type": "text/plain" }).end("ok\n");
        return true;
      },
      (req, res) => {
        if (req.url !== "/readyz") return false;
        if (this.serving) res.writeHead(200, { "content-type": "text/plain" }).end("ready\n");
        else res.writeHead(503, { "content-type": "text/plain" }).end(this.shuttingDown ? "shutting down\n" : "database unavailable\n");
        return true;
      },
    ];
  }

  private schedule(): void {
    if (this.shuttingDown) return;
    // A chain of timeouts, not an interval: a slow ping never overlaps the next.
    this.timer = setTimeout(() => void this.check().then(() => this.schedule()), this.pollMs);
    this.timer.unref();
  }

  private async check(): Promise<void> {
    let timeout: NodeJS.Timeout | undefined;
    const tooSlow = new Promise<never>((_, reject) => {
      timeout = setTimeout(() => reject(new Error(`no answer within ${this.pollMs} ms`)), this.pollMs);
    });
    let failure: unknown = null;
    try {
      await Promise.race([this.store.ping(), tooSlow]);
    } catch (err) {
      failure = err;
    } finally {
      clearTimeout(timeout);
    }
    const up = failure === null;
    if (up !== this.databaseUp) {
      if (up) this.logger.info("database reachable: serving");
      else this.logger.warn({ err: describe(failure) }, "database unreachable: not serving");
    }
    this.databaseUp = up;
    this.publish();
  }

  private publish(): void {
    const status: ServingStatus = this.serving ? "SERVING" : "NOT_SERVING";
    // Watchers are told about changes only, as the health protocol asks.
    if (status === this.published) return;
    this.published = status;
    for (const name of this.names) this.grpcHealth.setStatus(name, status);
  }
}

/** The error and its cause (the store wraps driver errors), as text: no stack, no query. */
function describe(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  const cause = (err as { cause?: unknown }).cause;
  return cause instanceof Error ? `${err.message} (${cause.message})` : err.message;
}
