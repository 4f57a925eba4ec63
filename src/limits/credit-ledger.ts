// The in-memory credit ledger (the port: CreditLedger in src/keys/ports.ts),
// for dev mode and tests. Redis holds the live counters; a ledger holds what
// each key had used per month as of the last flush, so that a Redis that lost
// its data is re-seeded from there instead of handing out a fresh month. A
// month's `used` only ever grows: saves keep the larger value. The MySQL
// ledger is MySqlStore.creditLedger() (src/store/mysql-store.ts).
import type { CreditLedger, CreditUsage } from "../keys/ports.js";

export class MemoryCreditLedger implements CreditLedger {
  private readonly used = new Map<string, number>();

  load(organizationId: string, keyId: string, month: string): Promise<number> {
    return Promise.resolve(this.used.get(`${organizationId}:${keyId}:${month}`) ?? 0);
  }

  save(entries: readonly CreditUsage[]): Promise<void> {
    for (const e of entries) {
      const id = `${e.organizationId}:${e.keyId}:${e.month}`;
      this.used.set(id, Math.max(this.used.get(id) ?? 0, e.used));
    }
    return Promise.resolve();
  }

  close(): Promise<void> {
    return Promise.resolve();
  }
}
