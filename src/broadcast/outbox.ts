// The invalidation outbox's worker. A change that affects verification writes
// its invalidation to the store's outbox in its own transaction (Change.invalidation);
// this wrapper around the broadcast deletes the row once the change is
// announced (before the call returns), and every instance whose broadcast is healthy publishes rows
// left behind (their broadcast failed: the revoking instance lost Redis, or
// crashed between commit and publish) once they are older than the poll
// interval. Nothing committed is thus left unannounced: see the bound in
// docs/revocation.md. Publishing a row twice is harmless (an invalidation only
// evicts), so instances need not coordinate.
import type { Invalidation, Invalidator, OutboxRef, Store } from "../keys/ports.js";
import type { Logger } from "../logger.js";

const MAX_ANNOUNCED = 100_000;

export interface OutboxOptions {
  /** The broadcast (or, in dev mode, the local invalidator). */
  invalidator: Invalidator;
  /** Whether this instance can announce now (its broadcast is subscribed); rows are left to others otherwise. */
  healthy: () => boolean;
  store: Pick<Store, "pendingInvalidations" | "deleteInvalidations">;
  logger: Logger;
  /** How often rows are looked for, and how old a row must be to be published by the worker (ms). */
  pollMs: number;
  /** Rows published per poll at most. */
  batch?: number;
  /** Wall-clock time (the rows' create_time is the change's time). */
  now?: () => number;
}

export class InvalidationOutbox implements Invalidator {
  /** Rows published by the worker (their own broadcast had failed or not happened). */
  published = 0;
  private readonly options: Required<OutboxOptions>;
  /** Announced rows whose delete failed, retried by the worker (a row deleted late is published once more). */
  private announced: OutboxRef[] = [];
  private timer: NodeJS.Timeout | null = null;
  private polling: Promise<void> | null = null;

  constructor(options: OutboxOptions) {
    this.options = { batch: 100, now: Date.now, ...options };
  }

  async invalidate(event: Invalidation, outbox?: OutboxRef): Promise<void> {
    await this.options.invalidator.invalidate(event);
    if (outbox === undefined) return;
    // Deleted before the call returns, so that a change's writes are over when it answers. A failed delete
    // does not fail the call: the worker retries it, and at worst the row is published once more.
    try {
      await this.options.store.deleteInvalidations([outbox]);
    } catch {
      this.remember(outbox);
    }
  }

  start(): void {
    this.timer = setInterval(() => void this.poll(), this.options.pollMs);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    await this.polling;
    await this.deleteAnnounced();
  }

  /** One round: delete what was announced, then publish what is old enough. Never throws. */
  poll(): Promise<void> {
    this.polling ??= this.round().finally(() => (this.polling = null));
    return this.polling;
  }

  private async round(): Promise<void> {
    const { store, logger, pollMs, batch, now, healthy, invalidator } = this.options;
    try {
      await this.deleteAnnounced();
      if (!healthy()) return;
      const rows = await store.pendingInvalidations(now() - pollMs, batch);
      for (const row of rows) {
        await invalidator.invalidate(row.invalidation);
        this.published++;
        this.remember(row);
      }
      if (rows.length > 0) logger.info({ rows: rows.length }, "published invalidations whose own broadcast had failed");
      await this.deleteAnnounced();
    } catch (err) {
      logger.warn({ err }, "the invalidation outbox round failed; will retry");
    }
  }

  private remember(ref: OutboxRef): void {
    // Bounded while the store cannot delete: a row forgotten here is published once more, which is harmless.
    if (this.announced.length < MAX_ANNOUNCED) this.announced.push(ref);
  }

  private async deleteAnnounced(): Promise<void> {
    if (this.announced.length === 0) return;
    const refs = this.announced;
    this.announced = [];
    try {
      await this.options.store.deleteInvalidations(refs.map(({ organizationId, id }) => ({ organizationId, id })));
    } catch (err) {
      for (const ref of refs) this.remember(ref);
      throw err;
    }
  }
}
