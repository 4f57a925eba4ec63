// The credit ledgers (the port: CreditLedger in src/keys/ports.ts). Redis
// holds the live counters; the ledger holds what each key had used per month
// as of the last flush, so that a Redis that lost its data is re-seeded from
// here instead of handing out a fresh month. A month's `used` only ever grows:
// saves keep the larger value.
import type { RowDataPacket } from "mysql2/promise";
import type { CreditLedger, CreditUsage } from "../keys/ports.js";
import { type Queryable, TimedPool, createPool, guard } from "../store/mysql-pool.js";

/** Rows per INSERT: keeps each statement well under max_allowed_packet. */
const SAVE_CHUNK = 1000;

export class MySqlCreditLedger implements CreditLedger {
  private constructor(private readonly db: TimedPool) {}

  /**
   * A small pool of its own: the ledger is written once per flush interval and
   * read only to seed a counter, and must not wait behind the store's queries.
   * Bounded like the store's, so a hung database fails a flush or a seed with
   * UNAVAILABLE instead of stalling it (and every flush after it) for good.
   */
  static open(url: string): MySqlCreditLedger {
    return new MySqlCreditLedger(new TimedPool(createPool(url, 2)));
  }

  load(keyId: string, month: string): Promise<number> {
    return guard(async () => {
      const [rows] = await this.db.run((db) =>
        db.query<RowDataPacket[]>("SELECT used FROM credit_usage WHERE key_id = ? AND month = ?", [keyId, month]),
      );
      return rows.length === 0 ? 0 : Number(rows[0].used);
    });
  }

  save(entries: readonly CreditUsage[]): Promise<void> {
    return guard(() => this.db.run(async (db) => this.saveOn(db, entries)));
  }

  private async saveOn(db: Queryable, entries: readonly CreditUsage[]): Promise<void> {
    for (let i = 0; i < entries.length; i += SAVE_CHUNK) {
      const chunk = entries.slice(i, i + SAVE_CHUNK);
      const params: (string | number)[] = [];
      for (const e of chunk) params.push(e.keyId, e.month, e.used);
      // VALUES() rather than the row alias: MariaDB does not support the alias.
      await db.query(
        `INSERT INTO credit_usage (key_id, month, used, update_time) VALUES ${chunk.map(() => "(?, ?, ?, UTC_TIMESTAMP(3))").join(", ")}
         ON DUPLICATE KEY UPDATE
           update_time = IF(VALUES(used) > used, VALUES(update_time), update_time),
           used = GREATEST(used, VALUES(used))`,
        params,
      );
    }
  }

  close(): Promise<void> {
    return this.db.end();
  }
}

export class MemoryCreditLedger implements CreditLedger {
  private readonly used = new Map<string, number>();

  load(keyId: string, month: string): Promise<number> {
    return Promise.resolve(this.used.get(`${keyId}:${month}`) ?? 0);
  }

  save(entries: readonly CreditUsage[]): Promise<void> {
    for (const e of entries) {
      const id = `${e.keyId}:${e.month}`;
      this.used.set(id, Math.max(this.used.get(id) ?? 0, e.used));
    }
    return Promise.resolve();
  }

  close(): Promise<void> {
    return Promise.resolve();
  }
}
