// MySqlStore against MariaDB: the shared contract, plus what only a real
// database can show (migrations, query plans, a dead server).
import mysql from "mysql2/promise";
import type { RowDataPacket } from "mysql2/promise";
import { randomBytes } from "node:crypto";
import { readdir } from "node:fs/promises";
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Role } from "../../gen/apikeys/v1/apikeys_pb.js";
import { ApiError, Status } from "../../src/keys/errors.js";
import { migrationsDirectory } from "../../src/store/migrate.js";
import { FIND_BY_HASH_SQL, LOOKUP_HASH_SQL, MySqlStore } from "../../src/store/mysql-store.js";
import type { CreatedKey } from "../../src/keys/ports.js";
import { describeStoreContract } from "../contract/store-contract.js";
import { type TestDatabase, freshDatabase } from "../helpers/mysql.js";
import { keyRecord, newKey, uid } from "../helpers/records.js";

describeStoreContract("mysql", async () => {
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

describe("MySqlStore", () => {
  let db: TestDatabase;
  let conn: mysql.Connection;

  beforeAll(async () => {
    db = await freshDatabase();
  });

  afterAll(async () => {
    await conn?.end();
    await db?.drop();
  });

  it("creates the database and migrates, also from three instances at once and again", async () => {
    const stores = await Promise.all([1, 2, 3].map(() => MySqlStore.open(db.url, { poolSize: 2 })));
    try {
      await Promise.all(stores.map((s) => s.migrate()));
      await stores[0].migrate();
    } finally {
      await Promise.all(stores.map((s) => s.close()));
    }
    conn ??= await mysql.createConnection(db.url);
    const [applied] = await conn.query<RowDataPacket[]>("SELECT version FROM schema_migrations ORDER BY version");
    const files = (await readdir(migrationsDirectory())).filter((f) => f.endsWith(".sql")).sort();
    expect(files[0]).toBe("001_initial.sql");
    expect(applied.map((r) => r.version)).toEqual(files);
    const [tables] = await conn.query<RowDataPacket[]>("SHOW TABLES");
    expect(tables.map((r) => Object.values(r)[0])).toEqual(
      expect.arrayContaining(["api_keys", "audit_events", "key_secrets", "members", "organizations", "schema_migrations"]),
    );
  });

  /** A key in the migrated database, for the tests below that look at rows directly. */
  async function createKey(store: MySqlStore, organizationId: string): Promise<Buffer> {
    const hash = randomBytes(32);
    const now = Date.now();
    const id = `key_${randomBytes(8).toString("hex")}`;
    await store.createKey({
      key: keyRecord({ id, organizationId, name: "", preview: "sk_x…y", createdBy: "u_a", createTime: now, updateTime: now }),
      hash,
      enrollRole: Role.MEMBER,
      requestId: "",
      audit: {
        id: `evt_${randomBytes(8).toString("hex")}`,
        organizationId,
        time: now,
        actorUserId: "u_a",
        actorRole: Role.MEMBER,
        caller: "test",
        action: "key.create",
        keyId: id,
        details: {},
      },
    });
    return hash;
  }

  it("verifies with two point lookups: the hash's organization, then the secret by primary key", async () => {
    const store = await MySqlStore.open(db.url);
    try {
      await store.migrate();
      const hash = await createKey(store, "org_explain");
      conn ??= await mysql.createConnection(db.url);
      const [lookup] = await conn.query<RowDataPacket[]>(`EXPLAIN ${LOOKUP_HASH_SQL}`, [hash]);
      expect(lookup).toMatchObject([{ table: "key_lookup", key: "PRIMARY" }]);
      const [plan] = await conn.query<RowDataPacket[]>(`EXPLAIN ${FIND_BY_HASH_SQL}`, ["org_explain", hash]);
      const byTable = Object.fromEntries(plan.map((row) => [row.table, row]));
      expect(byTable.s).toMatchObject({ key: "PRIMARY" });
      expect(["uq_api_keys_id", "PRIMARY"]).toContain(byTable.k.key);
      expect(byTable.m).toMatchObject({ key: "PRIMARY" });
      expect(byTable.o).toMatchObject({ key: "PRIMARY" });
      for (const row of plan) expect(row.type).not.toBe("ALL");
    } finally {
      await store.close();
    }
  });

  it("treats a key whose organization has no row as enabled", async () => {
    const store = await MySqlStore.open(db.url);
    try {
      await store.migrate();
      const hash = await createKey(store, "org_rowless");
      conn ??= await mysql.createConnection(db.url);
      await conn.query("DELETE FROM organizations WHERE id = 'org_rowless'");
      expect(await store.findByHash(hash)).toMatchObject({ orgEnabled: true, memberRole: Role.MEMBER });
    } finally {
      await store.close();
    }
  });

  it("writes other creates while batches of creates wait for a lock", async () => {
    const store = await MySqlStore.open(db.url);
    await store.migrate();
    const locker = await mysql.createConnection(db.url);
    const org = "org_stuck";
    const keyOf = (createdBy: string) => newKey(org, { key: { createdBy } });
    try {
      await store.createKey(keyOf("u_stuck"));
      // Another session holds the creator's member row: every create of that creator waits for it.
      await locker.query("START TRANSACTION");
      await locker.query("SELECT role FROM members WHERE organization_id = ? AND user_id = ? FOR UPDATE", [org, "u_stuck"]);
      // Batches of creates of that creator, one after another, each waiting for the lock...
      const waiting: Promise<CreatedKey>[] = [];
      for (let i = 0; i < 3; i++) {
        waiting.push(store.createKey(keyOf("u_stuck")));
        await sleep(100);
      }
      const stuck = Promise.allSettled(waiting);
      // ...do not hold up a create of someone else: it is written meanwhile, not after they give up.
      const first = await Promise.race([store.createKey(keyOf("u_free")).then((r) => r.created), stuck.then(() => "the stuck ones")]);
      expect(first).toBe(true);
      await locker.query("COMMIT");
      expect((await stuck).map((r) => r.status === "fulfilled" && r.value.created)).toEqual([true, true, true]);
    } finally {
      await locker.end();
      await store.close();
    }
  });

  it("never overwrites a role another session set while the create waited", async () => {
    const store = await MySqlStore.open(db.url);
    await store.migrate();
    const changer = await mysql.createConnection(db.url);
    const org = "org_role_race";
    const keyAs = (enrollRole: Role) => newKey(org, { key: { createdBy: "u_race" }, enrollRole });
    try {
      expect((await store.createKey(keyAs(Role.MEMBER))).memberChanged).toBe(true);
      // Another session (another instance's create, say) makes the creator an admin and has not committed yet...
      await changer.query("START TRANSACTION");
      await changer.query("UPDATE members SET role = ? WHERE organization_id = ? AND user_id = ?", [Role.ADMIN, org, "u_race"]);
      // ...when a create with the role the row held before starts.
      const create = store.createKey(keyAs(Role.MEMBER));
      await sleep(200);
      await changer.query("COMMIT");
      // It waited for that change and left it as it is: membership changes only through OrganizationService.
      expect((await create).memberChanged).toBe(false);
      const [rows] = await changer.query<RowDataPacket[]>("SELECT role FROM members WHERE organization_id = ? AND user_id = ?", [org, "u_race"]);
      expect(Number(rows[0].role)).toBe(Role.ADMIN);
    } finally {
      await changer.end();
      await store.close();
    }
  });

  it("does not deadlock first creates of new creators from several instances at once", async () => {
    // Each create locks its creators' member rows before writing them; for creators without a row yet, that
    // must not lock the gap between rows, or two instances' batches of new creators deadlock over it.
    const stores = await Promise.all([1, 2, 3].map(() => MySqlStore.open(db.url)));
    try {
      await stores[0].migrate();
      const org = "org_new_creators";
      const creates = stores.flatMap((store) =>
        Array.from({ length: 300 }, (_, i) =>
          store.createKey(newKey(org, { key: { createdBy: uid("u") }, enrollRole: i % 2 === 0 ? Role.MEMBER : Role.ADMIN })),
        ),
      );
      const results = await Promise.allSettled(creates);
      expect(results.filter((r) => r.status === "rejected")).toEqual([]);
      expect(stores.map((s) => s.poolStats().deadlocks)).toEqual([0, 0, 0]);
    } finally {
      await Promise.all(stores.map((s) => s.close()));
    }
  });

  it("reports a dead database as UNAVAILABLE, fast", async () => {
    const store = await MySqlStore.open("mysql://root@127.0.0.1:1/apikeys");
    try {
      const started = Date.now();
      for (const call of [() => store.getKey("org", "key"), () => store.findByHash(randomBytes(32)), () => store.migrate()]) {
        const err = await call().then(
          () => null,
          (e: unknown) => e,
        );
        expect(err).toBeInstanceOf(ApiError);
        expect((err as ApiError).code).toBe(Status.UNAVAILABLE);
      }
      expect(Date.now() - started).toBeLessThan(3000);
    } finally {
      await store.close();
    }
  });
});
