// Load and measurement for the fault tests: loops that keep calling while a
// test breaks things, waiting for conditions, and latency summaries.
import { Role } from "../../../gen/apikeys/v1/apikeys_pb.js";

export const owner = { userId: "u_owner", role: Role.OWNER };

/** gRPC status codes the tests expect (connect-node and grpc-js use the same numbers). */
export const GRPC = { FAILED_PRECONDITION: 9, UNAVAILABLE: 14 } as const;

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** The gRPC status code of a failed call (ConnectError and grpc-js ServiceError both carry it as `code`). */
export function codeOf(err: unknown): number | string {
  const code = (err as { code?: unknown })?.code;
  return typeof code === "number" ? code : String(err);
}

/** Waits until `check` holds; returns how long that took (ms). */
export async function until(what: string, check: () => boolean | Promise<boolean>, timeoutMs: number): Promise<number> {
  const started = Date.now();
  while (!(await check())) {
    if (Date.now() - started > timeoutMs) throw new Error(`not within ${timeoutMs} ms: ${what}`);
    await sleep(20);
  }
  return Date.now() - started;
}

/**
 * Runs `step` over and over on `concurrency` lanes until stop(). A step
 * records what it expects itself; anything it throws is a test failure,
 * reported by stop().
 */
export class Loop {
  private running = true;
  private readonly lanes: Promise<void>[];
  private failure: unknown = null;
  iterations = 0;

  constructor(step: () => Promise<void>, options: { concurrency?: number; pauseMs?: number } = {}) {
    const { concurrency = 1, pauseMs = 0 } = options;
    this.lanes = Array.from({ length: concurrency }, async () => {
      while (this.running && this.failure === null) {
        try {
          await step();
          this.iterations++;
        } catch (err) {
          this.failure = err;
        }
        // Always yield, so a step that answers synchronously cannot starve the test.
        await sleep(pauseMs);
      }
    });
  }

  async stop(): Promise<void> {
    this.running = false;
    await Promise.all(this.lanes);
    if (this.failure !== null) throw this.failure;
  }
}

/** Latency samples (ms) of one operation. */
export class Latencies {
  private readonly samples: number[] = [];

  constructor(readonly name: string) {}

  async time<T>(call: () => Promise<T>): Promise<T> {
    const started = performance.now();
    try {
      return await call();
    } finally {
      this.samples.push(performance.now() - started);
    }
  }

  get count(): number {
    return this.samples.length;
  }

  /** The q-quantile (0..1), nearest rank. */
  quantile(q: number): number {
    if (this.samples.length === 0) return Number.NaN;
    const sorted = [...this.samples].sort((a, b) => a - b);
    return sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)];
  }

  get max(): number {
    return Math.max(...this.samples);
  }

  toString(): string {
    const f = (ms: number) => ms.toFixed(ms < 10 ? 2 : 0);
    return `${this.name}: n=${this.count} p50=${f(this.quantile(0.5))} ms p99=${f(this.quantile(0.99))} ms max=${f(this.max)} ms`;
  }
}

/** Picks a random element. */
export function pick<T>(items: readonly T[]): T {
  return items[Math.floor(Math.random() * items.length)];
}
