// Proof, without Vitess, that every statement the service sends could be
// routed to one shard of a database sharded by organization
// (deploy/vitess/vschema.json): the suites below run with every statement
// recorded at the pool's seam (recordStatements), and the last test fails on
// a statement on a sharded table without its organization (key_lookup: without
// its hash), or a statement or transaction that names two organizations. See
// test/helpers/statements.ts for the rules.
//
// Recorded: the store contract suite (twice: pipelining on, and off as on
// vtgate, where it must also send no SET TRANSACTION, ROW_COUNT() or
// GET_LOCK), the credit ledger, the key lifecycle e2e, and a small run of the
// concurrency fault suite (two instances, many calls on one key and one
// organization at once). The other fault suites stop or cut dependencies;
// their statements are the same ones.
import "../e2e/lifecycle.test.js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { MySqlStore } from "../../src/store/mysql-store.js";
import { describeStoreContract } from "../contract/store-contract.js";
import { concurrencySuite } from "../faults/scenarios/concurrency.js";
import { freshDatabase } from "../helpers/mysql.js";
import { newKey } from "../helpers/records.js";
import { StatementRecorder } from "../helpers/statements.js";

const recorder = new StatementRecorder().start();

describeStoreContract("MySQL (statements recorded)", async () => {
  const db = await freshDatabase();
  const store = await MySqlStore.open(db.url);
  await store.migrate();
  return {
    store,
    cleanup: async () => {
      await store.close();
      await db.drop();
    },
  };
});

describe("MySQL credit ledger (statements recorded)", () => {
  it("saves and loads credits of several organizations", async () => {
    const db = await freshDatabase();
    const store = await MySqlStore.open(db.url);
    try {
      await store.migrate();
      const ledger = store.creditLedger();
      await ledger.save([
        { organizationId: "org_a", keyId: "key_1", month: "203101", used: 5 },
        { organizationId: "org_b", keyId: "key_2", month: "203101", used: 7 },
      ]);
      expect(await ledger.load("org_b", "key_2", "203101")).toBe(7);
    } finally {
      await store.close();
      await db.drop();
    }
  });
});

describe("creates of several organizations at once (statements recorded)", () => {
  it("are written, each organization's in transactions of its own", async () => {
    const db = await freshDatabase();
    const store = await MySqlStore.open(db.url);
    try {
      await store.migrate();
      const created = await Promise.all(Array.from({ length: 36 }, (_, i) => store.createKey(newKey(`org_burst_${i % 3}`))));
      expect(created.every((c) => c.created)).toBe(true);
    } finally {
      await store.close();
      await db.drop();
    }
  });
});

concurrencySuite({ perKey: 12, requestIds: 8, retries: 3, walks: 2, timeoutMs: 60_000 });

/** Statements recorded while the store runs with pipelining off. */
const vtgate = { from: 0, to: 0 };
describe("with pipelining off (as on vtgate)", () => {
  beforeAll(() => {
    vtgate.from = recorder.statements.length;
  });
  afterAll(() => {
    vtgate.to = recorder.statements.length;
  });
  describeStoreContract("MySQL without pipelining (statements recorded)", async () => {
    const db = await freshDatabase();
    const store = await MySqlStore.open(db.url, { pipelining: false });
    await store.migrate();
    return {
      store,
      cleanup: async () => {
        await store.close();
        await db.drop();
      },
    };
  });
});

describe("the rules", () => {
  // The rules catch what they are for: statements of the schema before 003_sharding.sql.
  const check = (statements: [sql: string, values?: unknown[]][], options = {}) => {
    const rules = new StatementRecorder();
    const session = {};
    for (const [sql, values] of statements) rules.statements.push({ session, sql, values });
    return rules.violations(options);
  };

  it("accept statements keyed by organization, joins on it, and the lookup by hash", () => {
    expect(
      check([
        ["INSERT INTO key_lookup (hash, organization_id, key_id) VALUES (?, ?, ?) ON DUPLICATE KEY UPDATE key_id = VALUES(key_id)", ["h", "o1", "k"]],
        ["START TRANSACTION"],
        ["INSERT INTO api_keys (seq, id, organization_id) VALUES (?, ?, ?), (?, ?, ?)", [1, "a", "o1", 2, "b", "o1"]],
        ["SELECT * FROM key_secrets s JOIN api_keys k ON k.organization_id = s.organization_id AND k.id = s.key_id LEFT JOIN organizations o ON o.id = s.organization_id WHERE s.organization_id = ? AND s.hash = ?", ["o1", "h"]],
        ["INSERT INTO audit_events (seq, organization_id) SELECT ?, ? FROM DUAL WHERE 1", [3, "o1"]],
        ["COMMIT"],
      ]),
    ).toEqual([]);
  });

  it("refuse a table without its organization, a lookup without its hash, two organizations at once, and what vtgate refuses", () => {
    expect(check([["SELECT * FROM key_secrets s JOIN api_keys k ON k.id = s.key_id WHERE s.hash = ?", ["h"]]])).toHaveLength(2);
    expect(check([["UPDATE api_keys SET revoke_time = ? WHERE seq IN (?)", [1, [1, 2]]]])).toHaveLength(1);
    expect(check([["DELETE FROM key_lookup WHERE key_id = ?", ["k"]]])).toHaveLength(1);
    expect(check([["INSERT INTO members (organization_id, user_id) VALUES (?, ?), (?, ?)", ["o1", "u", "o2", "u"]]])).toHaveLength(1);
    expect(
      check([
        ["START TRANSACTION"],
        ["INSERT INTO api_keys (seq, id, organization_id) VALUES (?, ?, ?)", [1, "a", "o1"]],
        ["INSERT INTO api_keys (seq, id, organization_id) VALUES (?, ?, ?)", [2, "b", "o2"]],
        ["COMMIT"],
      ]),
    ).toEqual([expect.stringMatching(/^transaction names 2 organizations/)]);
    expect(check([["SET TRANSACTION ISOLATION LEVEL READ COMMITTED"], ["SELECT GET_LOCK(?, ?)", ["l", 1]]], { vtgate: true })).toHaveLength(2);
  });
});

describe("the recorded statements", () => {
  afterAll(() => recorder.stop());

  it("reached every table", () => {
    const tables = recorder.tables();
    for (const table of ["api_keys", "key_secrets", "key_lookup", "members", "organizations", "audit_events", "credit_usage"]) {
      expect(tables.get(table) ?? 0, table).toBeGreaterThan(0);
    }
  });

  it("each name the organization of every sharded table they touch, and one organization per statement and per transaction", () => {
    expect(recorder.violations()).toEqual([]);
  });

  it("with pipelining off, hold nothing vtgate refuses", () => {
    expect(vtgate.to).toBeGreaterThan(vtgate.from);
    expect(recorder.violations({ vtgate: true, from: vtgate.from, to: vtgate.to })).toEqual([]);
  });
});
