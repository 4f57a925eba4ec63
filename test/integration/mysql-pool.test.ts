// TimedPool's transactions against MariaDB: statements queued with `later`
// travel with the next query or the COMMIT, and a failure anywhere in a batch
// rolls the whole transaction back.
import type { RowDataPacket } from "mysql2/promise";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { QUERY_TIMEOUT_MS, TimedConnection, TimedPool, createPool } from "../../src/store/mysql-pool.js";
import { DbProxy } from "../helpers/mariadb.js";
import { type TestDatabase, freshDatabase } from "../helpers/mysql.js";

describe("TimedPool.transaction", () => {
  let db: TestDatabase;
  let pool: TimedPool;

  const rows = async () => {
    const [result] = await pool.run((c) => c.query<RowDataPacket[]>("SELECT v FROM t ORDER BY v"));
    return result.map((r) => r.v as string);
  };
  beforeAll(async () => {
    db = await freshDatabase();
    await db.create();
    // One connection: the session counters below are that connection's.
    pool = new TimedPool(createPool(db.url, 1));
    await pool.run((c) => c.query("CREATE TABLE t (v VARCHAR(20) PRIMARY KEY)"));
  });

  afterAll(async () => {
    await pool?.end();
    await db?.drop();
  });

  it("sends queued statements with the next query, in order, and the rest with the COMMIT", async () => {
    await pool.run((c) => c.query("DELETE FROM t"));
    const seen = await pool.transaction(async (tx) => {
      tx.later("INSERT INTO t (v) VALUES (?)", ["a"]);
      tx.later("INSERT INTO t (v) VALUES (?)", ["b"]);
      const [result] = await tx.query<RowDataPacket[]>("SELECT COUNT(*) AS n FROM t WHERE v IN (?)", [["a", "b"]]);
      tx.later("INSERT INTO t (v) VALUES (?)", ["c"]);
      return Number(result[0].n);
    });
    expect(seen).toBe(2);
    expect(await rows()).toEqual(["a", "b", "c"]);
  });

  it("takes two round trips for START, an insert, a read, an insert and COMMIT", async () => {
    const sent = vi.spyOn(TimedConnection.prototype, "send");
    try {
      await pool.transaction(async (tx) => {
        tx.later("INSERT INTO t (v) VALUES (?)", ["rt1"]);
        await tx.query("SELECT 1");
        tx.later("INSERT INTO t (v) VALUES (?)", ["rt2"]);
      });
      expect(sent.mock.calls.map(([sql]) => sql.split(";\n").map((q) => q.split(" ")[0]))).toEqual([
        ["START", "INSERT", "SELECT"],
        ["INSERT", "COMMIT"],
      ]);
    } finally {
      sent.mockRestore();
    }
    expect(await rows()).toContain("rt2");
  });

  it("rolls everything back when a queued statement fails, and reports its error", async () => {
    await pool.run((c) => c.query("DELETE FROM t"));
    await pool.run((c) => c.query("INSERT INTO t (v) VALUES ('dup')"));
    const attempt = pool.transaction(async (tx) => {
      tx.later("INSERT INTO t (v) VALUES (?)", ["first"]);
      tx.later("INSERT INTO t (v) VALUES (?)", ["dup"]); // duplicate key, sent with the COMMIT
      tx.later("INSERT INTO t (v) VALUES (?)", ["after"]);
    });
    await expect(attempt).rejects.toMatchObject({ code: "ER_DUP_ENTRY" });
    expect(await rows()).toEqual(["dup"]);
    // The connection is clean afterwards: no transaction left open on it.
    await pool.transaction(async (tx) => tx.later("INSERT INTO t (v) VALUES (?)", ["next"]));
    expect(await rows()).toEqual(["dup", "next"]);
  });

  it("rolls back queued statements when the work itself throws", async () => {
    await pool.run((c) => c.query("DELETE FROM t"));
    const attempt = pool.transaction(async (tx) => {
      tx.later("INSERT INTO t (v) VALUES (?)", ["x"]);
      await tx.query("SELECT 1"); // x is written (uncommitted) here
      throw new Error("policy says no");
    });
    await expect(attempt).rejects.toThrow("policy says no");
    expect(await rows()).toEqual([]);
  });

  it("escapes queued values as query does (quotes, times in UTC)", async () => {
    await pool.run((c) => c.query("DELETE FROM t"));
    const tricky = "'); DROP TABLE t; --";
    await pool.transaction(async (tx) => tx.later("INSERT INTO t (v) VALUES (?)", [tricky.slice(0, 20)]));
    expect(await rows()).toEqual([tricky.slice(0, 20)]);
  });
});

describe("TimedConnection.execute", () => {
  let db: TestDatabase;
  let proxy: DbProxy;
  let pool: TimedPool;

  beforeAll(async () => {
    db = await freshDatabase();
    await db.create();
    proxy = await DbProxy.start();
    pool = new TimedPool(createPool(proxy.url(db.name), 1));
  });

  afterAll(async () => {
    await proxy?.close();
    await pool?.end().catch(() => {});
    await db?.drop();
  });

  // mysql2 bounds EXECUTE by its timeout option but not the PREPARE before a statement's first run on a
  // connection: on a database that stopped answering that hung the call for good (found by the MySQL fault
  // test, a VerifyKey of an uncached key waiting 18 s).
  it("gives up on a statement the database does not prepare, and drops the connection", async () => {
    const conn = await pool.acquire();
    const [rows] = await conn.execute<RowDataPacket[]>("SELECT ? AS v", [1]);
    expect(rows[0].v).toBe(1);
    proxy.hang();
    const started = performance.now();
    // Not prepared on this connection yet: PREPARE first.
    const err = await conn.execute("SELECT ? AS w", [2]).then(
      () => null,
      (e: unknown) => e,
    );
    const waited = performance.now() - started;
    expect((err as { code?: string } | null)?.code).toBe("PROTOCOL_SEQUENCE_TIMEOUT");
    expect(waited).toBeGreaterThanOrEqual(QUERY_TIMEOUT_MS - 50);
    expect(waited).toBeLessThan(QUERY_TIMEOUT_MS + 2000);
    expect(conn.broken).toBe(true);
    conn.release();
    proxy.restore();
  }, 15_000);
});
