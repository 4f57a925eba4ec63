// Writes what a component collects in memory in one batch per interval, so
// that the hot path never waits for (or causes) a write: last-used times
// (LastUsedTracker) and consumed credits (RedisUsageLimiter). A batch whose
// write fails goes back to be written with the next one.

/** What a flusher writes, and how the component hands it over. */
export interface FlushTarget<B> {
  /** What is pending, taken out (the component collects afresh meanwhile); null when nothing is. */
  take(): B | null;
  write(batch: B): Promise<void>;
  /** A batch whose write failed: back with what was collected since, for the next flush. */
  putBack(batch: B): void;
  /** Told about a failed write, after the batch went back. */
  failed(err: unknown, batch: B): void;
}

export class PeriodicFlusher<B> {
  /** Batches written, for metrics and tests. */
  writes = 0;
  private timer: NodeJS.Timeout | null = null;
  private flushing: Promise<void> | null = null;

  constructor(
    private readonly target: FlushTarget<B>,
    private readonly intervalMs: number,
  ) {}

  start(): void {
    if (this.timer) return;
    // A tick while a slow flush is still running skips; the next one takes what accumulated.
    this.timer = setInterval(() => {
      if (this.flushing === null) void this.flush();
    }, this.intervalMs);
    this.timer.unref();
  }

  /** Writes what is pending now (after the flush in flight, if one is). */
  flush(): Promise<void> {
    if (this.flushing) return this.flushing.then(() => this.flush());
    const batch = this.target.take();
    if (batch === null) return Promise.resolve();
    this.flushing = this.target
      .write(batch)
      .then(
        () => {
          this.writes++;
        },
        (err: unknown) => {
          this.target.putBack(batch);
          this.target.failed(err, batch);
        },
      )
      .finally(() => {
        this.flushing = null;
      });
    return this.flushing;
  }

  /** Stops the timer and writes what is left. */
  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    await this.flush();
  }
}
