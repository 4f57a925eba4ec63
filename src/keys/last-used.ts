// Last-used times are collected in memory and written in one batch per
// interval, so a verification never waits for (or causes) a database write.
// Kept by organization (the store writes each organization's on its own), and
// without allocating per verification once a key's organization is known.
import { PeriodicFlusher } from "./periodic-flusher.js";
import type { Store } from "./ports.js";

export class LastUsedTracker {
  /** Organization → key → last-used time. */
  private pending = new Map<string, Map<string, number>>();
  private readonly flusher: PeriodicFlusher<Map<string, Map<string, number>>>;

  constructor(store: Store, intervalMs: number, onError: (err: unknown) => void = () => {}) {
    this.flusher = new PeriodicFlusher(
      {
        take: () => {
          if (this.pending.size === 0) return null;
          const batch = this.pending;
          this.pending = new Map();
          return batch;
        },
        write: (batch) => store.touchLastUsed(batch),
        putBack: (batch) => {
          for (const [organizationId, keys] of batch) {
            for (const [id, t] of keys) {
              let pending = this.pending.get(organizationId);
              if (pending === undefined) this.pending.set(organizationId, (pending = new Map()));
              if ((pending.get(id) ?? 0) < t) pending.set(id, t);
            }
          }
        },
        failed: (err) => onError(err),
      },
      intervalMs,
    );
  }

  /** Batches written, for metrics and tests. */
  get writes(): number {
    return this.flusher.writes;
  }

  touch(organizationId: string, keyId: string, now: number): void {
    let keys = this.pending.get(organizationId);
    if (keys === undefined) this.pending.set(organizationId, (keys = new Map()));
    keys.set(keyId, now);
  }

  start(): void {
    this.flusher.start();
  }

  /** Writes what is pending. On failure the times are kept for the next flush. */
  flush(): Promise<void> {
    return this.flusher.flush();
  }

  /** Stops the timer and writes what is left. */
  stop(): Promise<void> {
    return this.flusher.stop();
  }
}
