// CreateKey's batching: creates that arrive while a batch is being written
// wait and go together in the next one, one multi-row transaction per
// organization. What is written, and how, is the store's (CreateWriter).
import { unavailable } from "../keys/errors.js";
import type { CreatedKey, NewKey } from "../keys/ports.js";
import { QUERY_TIMEOUT_MS, databaseUnavailable, noConnectionInTime } from "./mysql-pool.js";

/**
 * Create batches written at once (see CreateBatcher): CREATE_LANES; more, up to CREATE_LANES_MAX, once
 * the oldest waiting create has waited CREATE_SPILL_MS (a batch stuck behind a lock, or on a database that
 * stopped answering, must not hold up the others). A create that waited QUERY_TIMEOUT_MS for a lane fails
 * with UNAVAILABLE, as one that waited that long for a pooled connection does. One lane: under load, a
 * create waits for the batch being written and goes with the next; with two, batches were half as big and
 * MariaDB spent a third more CPU per create (bench, four alternating runs).
 */
const CREATE_LANES = 1;
const CREATE_LANES_MAX = 8;
const CREATE_SPILL_MS = 50;
/** Creates per batch at most. */
const CREATE_BATCH_MAX = 32;

interface QueuedCreate {
  queuedAt: number;
  input: NewKey;
  resolve: (created: CreatedKey) => void;
  reject: (err: unknown) => void;
}

/** How a store writes creates: one alone, or several of one organization in one transaction (all or none). */
export interface CreateWriter {
  createOne(input: NewKey): Promise<CreatedKey>;
  createMany(inputs: NewKey[]): Promise<Omit<CreatedKey, "created">[]>;
}

export class CreateBatcher {
  /** Creates waiting for a lane, and the lanes writing a batch. */
  private readonly creates: QueuedCreate[] = [];
  private createLanesBusy = 0;
  /** Looks again at the waiting creates while there are any (see CREATE_SPILL_MS). */
  private createTimer: NodeJS.Timeout | null = null;

  constructor(private readonly writer: CreateWriter) {}

  /**
   * Creates are written in batches: those that arrive while a batch is
   * being written (CREATE_LANES) wait and go together in the next one, as one
   * multi-row transaction (one round trip, one commit). Under load this is
   * most of a create's cost saved, for MySQL and for this process; one at a
   * time, a create is a batch of one. Each create still answers only once
   * its own rows are committed, and one that fails (a repeated request id,
   * say) does not fail the others: the batch is rolled back and each is
   * written on its own.
   */
  add(input: NewKey): Promise<CreatedKey> {
    return new Promise((resolve, reject) => {
      this.creates.push({ queuedAt: performance.now(), input, resolve, reject });
      this.startCreateBatches();
    });
  }

  private startCreateBatches(): void {
    const now = performance.now();
    while (this.creates.length > 0) {
      const waited = now - this.creates[0].queuedAt;
      if (waited >= QUERY_TIMEOUT_MS) {
        this.creates.shift()!.reject(unavailable("database", noConnectionInTime()));
        continue;
      }
      if (this.createLanesBusy >= (waited >= CREATE_SPILL_MS ? CREATE_LANES_MAX : CREATE_LANES)) break;
      const batch = this.takeBatch();
      this.createLanesBusy++;
      void this.writeCreates(batch).finally(() => {
        this.createLanesBusy--;
        this.startCreateBatches();
      });
    }
    if (this.creates.length > 0 && this.createTimer === null) {
      this.createTimer = setTimeout(() => {
        this.createTimer = null;
        this.startCreateBatches();
      }, CREATE_SPILL_MS);
    }
  }

  /**
   * The oldest waiting create and those of its organization queued after it,
   * up to CREATE_BATCH_MAX: a transaction is about one organization (one
   * shard under Vitess). The others keep their places.
   */
  private takeBatch(): QueuedCreate[] {
    const organizationId = this.creates[0].input.key.organizationId;
    const batch: QueuedCreate[] = [];
    let kept = 0;
    for (let i = 0; i < this.creates.length; i++) {
      const create = this.creates[i];
      if (batch.length < CREATE_BATCH_MAX && create.input.key.organizationId === organizationId) batch.push(create);
      else this.creates[kept++] = create;
    }
    this.creates.length = kept;
    return batch;
  }

  private async writeCreates(batch: QueuedCreate[]): Promise<void> {
    if (batch.length === 1) {
      const [one] = batch;
      return this.writer.createOne(one.input).then(one.resolve, one.reject);
    }
    try {
      const created = await this.writer.createMany(batch.map((c) => c.input));
      batch.forEach((c, i) => c.resolve({ ...created[i], created: true }));
    } catch (err) {
      if (databaseUnavailable(err)) {
        const error = unavailable("database", err);
        for (const c of batch) c.reject(error);
        return;
      }
      // Refused for one of them, most likely: each on its own gets its own answer, in the batch's order.
      for (const c of batch) await this.writeCreates([c]);
    }
  }
}
