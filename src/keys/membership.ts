// Unknown keys answered from memory: a Bloom filter of every stored secret
// hash, so a well-formed key whose hash the filter rules out is NOT_FOUND
// without a database lookup. A Bloom filter never says "absent" for a hash it
// holds; ~1% of unknown hashes look present and go to the database as before.
//
// Why a small typed-array filter rather than an npm library: the secret hashes
// are HMAC-SHA256 outputs, uniformly random already, so the filter's k bit
// positions come from the hash's own first 8 bytes (double hashing) with no
// hashing of our own; the popular Bloom/cuckoo packages hash their input again
// (murmur/fnv over strings), which costs more per call than this whole file.
//
// Correctness: a false "absent" would turn a valid key into NOT_FOUND, so the
// filter is used only while it is complete:
// - It is loaded from the store after the broadcast subscription is up, and a
//   key created anywhere is added on every instance before CreateKey returns
//   (the "created" invalidation, which carries the first 8 bytes of the hash).
//   Additions that arrive while a load runs go into the filter being loaded.
// - When the instance may have missed broadcasts (its cache is distrusted: a
//   lost subscription, a rejected message), the filter is dropped at once and
//   reloaded once the cache is trusted again; until then every miss goes to the
//   database, within the unknown-key budget (unknown-key-budget.ts).
import type { Logger } from "../logger.js";
import type { Store } from "./ports.js";

/** Bits set per key; with ≥ 10 bits per key the false-positive rate is under 1%. */
const PROBES = 7;
const MIN_BITS_PER_KEY = 10;
/** Room for growth before a reload must size the filter up. */
const HEADROOM = 2;
const MIN_CAPACITY = 1 << 16;
const SCAN_BATCH = 10_000;

/** What the broadcast carries of a new secret's hash: its first 8 bytes, hex. */
export function hashMark(hash: Uint8Array): string {
  return Buffer.from(hash.buffer, hash.byteOffset, 8).toString("hex");
}

export const MARK = /^[0-9a-f]{16}$/;

export class BloomFilter {
  private readonly bits: Int32Array;
  private readonly mask: number;
  count = 0;
  readonly capacity: number;

  constructor(capacity: number) {
    // A power of two, so a bit index is a mask, not a division.
    let size = 1 << 5;
    while (size < capacity * MIN_BITS_PER_KEY) size *= 2;
    this.bits = new Int32Array(size >>> 5);
    this.mask = size - 1;
    this.capacity = capacity;
  }

  get bytes(): number {
    return this.bits.byteLength;
  }

  add(h1: number, h2: number): void {
    const bits = this.bits;
    for (let i = 0; i < PROBES; i++) {
      const bit = (h1 + Math.imul(i, h2)) & this.mask;
      bits[bit >>> 5] |= 1 << (bit & 31);
    }
    this.count++;
  }

  has(h1: number, h2: number): boolean {
    const bits = this.bits;
    for (let i = 0; i < PROBES; i++) {
      const bit = (h1 + Math.imul(i, h2)) & this.mask;
      if ((bits[bit >>> 5] & (1 << (bit & 31))) === 0) return false;
    }
    return true;
  }

  addHash(hash: Uint8Array): void {
    this.add(word(hash, 0), word(hash, 4) | 1);
  }

  hasHash(hash: Uint8Array): boolean {
    return this.has(word(hash, 0), word(hash, 4) | 1);
  }
}

function word(b: Uint8Array, at: number): number {
  return b[at] | (b[at + 1] << 8) | (b[at + 2] << 16) | (b[at + 3] << 24);
}

export class MembershipStats {
  /** Unknown keys answered from the filter, without a lookup. */
  ruledOut = 0;
  /** Loads completed, and how long the last one took (ms) for how many hashes. */
  loads = 0;
  lastLoadMs = 0;
  lastLoadKeys = 0;
}

export interface MembershipOptions {
  store: Pick<Store, "countSecretHashes" | "scanSecretHashes">;
  logger: Logger;
  /** Whether the instance may trust what it holds (the verify cache's lease); null = always (one instance). */
  trusted: (() => boolean) | null;
}

export class Membership {
  readonly stats = new MembershipStats();
  private filter: BloomFilter | null = null;
  private loading: BloomFilter | null = null;
  /** Bumped by lost(): a load that started before it is thrown away. */
  private epoch = 0;
  private readonly store: MembershipOptions["store"];
  private readonly logger: Logger;
  private readonly trusted: (() => boolean) | null;
  private reloading = false;

  constructor(options: MembershipOptions) {
    this.store = options.store;
    this.logger = options.logger;
    this.trusted = options.trusted;
  }

  /** True when no stored secret can have this hash (nor `previous`, the previous pepper's, if any). */
  excludes(hash: Uint8Array, previous: Uint8Array | null): boolean {
    const filter = this.filter;
    if (filter === null) {
      this.reloadIfTrusted();
      return false;
    }
    if (this.trusted !== null && !this.trusted()) return false;
    if (filter.hasHash(hash) || (previous !== null && filter.hasHash(previous))) return false;
    this.stats.ruledOut++;
    return true;
  }

  /** A secret stored by this instance (before its change is announced to the others). */
  addHash(hash: Uint8Array): void {
    this.filter?.addHash(hash);
    this.loading?.addHash(hash);
    if (this.filter !== null && this.filter.count > this.filter.capacity) this.outgrown();
  }

  /** Secrets stored by any instance (the "created" broadcast). */
  addMarks(marks: readonly string[]): void {
    for (const mark of marks) this.addHash(Buffer.from(mark, "hex"));
  }

  /** This instance may have missed additions: stop using the filter now, load it again when trusted. */
  lost(): void {
    this.epoch++;
    this.filter = null;
    this.loading = null;
  }

  get ready(): boolean {
    return this.filter !== null;
  }

  get bytes(): number {
    return this.filter?.bytes ?? 0;
  }

  /** Loads every stored hash; resolves when the filter is in use (or the load was overtaken by lost()). */
  async load(): Promise<void> {
    const epoch = ++this.epoch;
    const started = performance.now();
    const capacity = Math.max(MIN_CAPACITY, (await this.store.countSecretHashes()) * HEADROOM);
    if (epoch !== this.epoch) return;
    const next = new BloomFilter(capacity);
    // From now on, additions reach the filter being loaded too.
    this.loading = next;
    let after: Buffer | null = null;
    for (;;) {
      const batch = await this.store.scanSecretHashes(after, SCAN_BATCH);
      if (epoch !== this.epoch) return;
      for (const hash of batch) next.addHash(hash);
      if (batch.length < SCAN_BATCH) break;
      after = batch[batch.length - 1];
    }
    this.loading = null;
    this.filter = next;
    this.stats.loads++;
    this.stats.lastLoadMs = performance.now() - started;
    this.stats.lastLoadKeys = next.count;
  }

  private reloadIfTrusted(): void {
    if (this.reloading || this.loading !== null || (this.trusted !== null && !this.trusted())) return;
    this.reloading = true;
    this.load().then(
      () => (this.reloading = false),
      (err: unknown) => {
        this.reloading = false;
        this.logger.warn({ err: err instanceof Error ? err.message : String(err) }, "loading the key membership filter failed; unknown keys go to the database");
      },
    );
  }

  /** More keys than the filter was sized for: its false-positive rate climbs, so load a larger one. */
  private outgrown(): void {
    if (this.loading !== null || this.reloading) return;
    // The current filter stays in use (still complete, only less selective) until the larger one is loaded.
    this.reloading = true;
    this.load().then(
      () => (this.reloading = false),
      () => (this.reloading = false),
    );
  }
}
