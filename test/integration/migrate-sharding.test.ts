// 003_sharding.sql on a database that already holds keys (written by the
// schema before it): the keys still verify, list after the keys made since,
// and keep their credits.
import { randomBytes } from "node:crypto";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import mysql from "mysql2/promise";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { migrationsDirectory, runMigrations } from "../../src/store/migrate.js";
import { MySqlStore } from "../../src/store/mysql-store.js";
import { halfWrittenKeys } from "../faults/support/consistency.js";
import { type TestDatabase, freshDatabase } from "../helpers/mysql.js";
import { newKey } from "../helpers/records.js";

describe("migrating a database with keys to 003_sharding.sql", () => {
  let db: TestDatabase;
  let store: MySqlStore;
  const hash = randomBytes(32);
  const now = new Date("2026-01-01T00:00:00Z");

  beforeAll(async () => {
    db = await freshDatabase();
    await db.create();
    const conn = await mysql.createConnection({ uri: db.url, multipleStatements: true, timezone: "Z" });
    try {
      for (const file of ["001_initial.sql", "002_credit_usage.sql"]) {
        await conn.query(await readFile(join(migrationsDirectory(), file), "utf8"));
      }
      await conn.query(
        `CREATE TABLE schema_migrations (version VARCHAR(255) NOT NULL PRIMARY KEY, apply_time DATETIME(3) NOT NULL)
         ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin`,
      );
      await conn.query("INSERT INTO schema_migrations VALUES ('001_initial.sql', ?), ('002_credit_usage.sql', ?)", [now, now]);
      // Rows as the service wrote them before: seq by AUTO_INCREMENT, secrets and credits without organization.
      await conn.query("INSERT INTO organizations (id, api_access_enabled, update_time) VALUES ('org_old', TRUE, ?)", [now]);
      await conn.query("INSERT INTO members (organization_id, user_id, role, update_time) VALUES ('org_old', 'u_old', 4, ?)", [now]);
      await conn.query(
        `INSERT INTO api_keys (id, organization_id, name, prefix, preview, scopes, created_by, create_time, update_time, metadata)
         VALUES ('key_old', 'org_old', 'old', 'sk', 'p', '[]', 'u_old', ?, ?, '{}')`,
        [now, now],
      );
      await conn.query("INSERT INTO key_secrets (hash, key_id) VALUES (?, 'key_old')", [hash]);
      await conn.query(
        `INSERT INTO audit_events (id, organization_id, time, actor_user_id, actor_role, caller, action, key_id, details)
         VALUES ('evt_old', 'org_old', ?, 'u_old', 4, 'c', 'key.create', 'key_old', '{}')`,
        [now],
      );
      await conn.query("INSERT INTO credit_usage (key_id, month, used, update_time) VALUES ('key_old', '202601', 42, ?)", [now]);
    } finally {
      await conn.end();
    }
    // 003 and whatever came after it.
    expect((await runMigrations(db.url, 2000))[0]).toBe("003_sharding.sql");
    store = await MySqlStore.open(db.url);
  });

  afterAll(async () => {
    await store?.close();
    await db?.drop();
  });

  it("keeps every key findable by its hash, with nothing half-written", async () => {
    expect((await store.findByHash(hash))!.key).toMatchObject({ id: "key_old", organizationId: "org_old" });
    expect(await halfWrittenKeys(db.url)).toEqual([]);
  });

  it("lists the old key after the keys made since, page by page", async () => {
    const { key } = await store.createKey(newKey("org_old"));
    const first = await store.listKeys({ organizationId: "org_old", projectId: "", createdBy: "", showRevoked: true, after: null, limit: 1 });
    expect(first.items.map((k) => k.id)).toEqual([key.id]);
    const second = await store.listKeys({ organizationId: "org_old", projectId: "", createdBy: "", showRevoked: true, after: first.next, limit: 1 });
    expect(second.items.map((k) => k.id)).toEqual(["key_old"]);
    expect(second.next).toBeNull();
    const events = await store.listAuditEvents({ organizationId: "org_old", after: null, limit: 10 });
    expect(events.items.map((e) => e.id).at(-1)).toBe("evt_old");
  });

  it("keeps the credits used, now under the key's organization", async () => {
    expect(await store.creditLedger().load("org_old", "key_old", "202601")).toBe(42);
  });
});
