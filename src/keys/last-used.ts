// Last-used times are collected in memory and written in one batch per
// interval, so a verification never waits for (or causes) a database write.
// Kept by organization (the store writes each organization's on its own), and
// without allocating per verification once a key's organization is known.
import type { Store } from "./ports.js";

export class LastUsedTracker {
  /** Organization → key → last-used time. */
  private pending = new Map<string, Map<string, number>>();
  private timer: NodeJS.Timeout | null = null;
  private flushing: Promise<void> | null = null;
  /** Batches written, for metrics and tests. */
  writes = 0;

  constructor(
    private readonly store: Store,
    private readonly intervalMs: number,
    private readonly onError: (err: unknown) => void = () => {},
  ) {}

  touch(organizationId: string, keyId: string, now: number): void {
    let keys = this.pending.get(organizationId);
    if (keys === undefined) this.pending.set(organizationId, (keys = new Map()));
    keys.set(keyId, now);
  }

  start(): void {
    if (this.timer) return;
    this.timer = setInterval(() => void this.flush(), this.intervalMs);
    this.timer.unref();
  }

  /** Writes what is pending. On failure the times are kept for the next flush. */
  flush(): Promise<void> {
    if (this.flushing) return this.flushing;
    if (this.pending.size === 0) return Promise.resolve();
    const batch = this.pending;
    this.pending = new Map();
    this.flushing = this.store
      .touchLastUsed(batch)
      .then(() => {
        this.writes++;
      })
      .catch((err) => {
        for (const [organizationId, keys] of batch) {
          for (const [id, t] of keys) {
            let pending = this.pending.get(organizationId);
            if (pending === undefined) this.pending.set(organizationId, (pending = new Map()));
            if ((pending.get(id) ?? 0) < t) pending.set(id, t);
          }
        }
        this.onError(err);
      })
      .finally(() => {
        this.flushing = null;
      });
    return this.flushing;
  }

  /** Stops the timer and writes what is left. */
  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    await this.flushing;
    await this.flush();
  }
}
