// Migrations as an operator step: `npm run migrate` and its --check mode
// against a real MariaDB, a service that starts with MIGRATE_ON_START=false
// and no DDL rights, and one that refuses to start on a schema that is behind.
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readdirSync } from "node:fs";
import { promisify } from "node:util";
import mysql from "mysql2/promise";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Role } from "../../gen/apikeys/v1/apikeys_pb.js";
import { loadConfig } from "../../src/config.js";
import { openStore } from "../../src/app.js";
import { SchemaBehindError, migrationsDirectory } from "../../src/store/migrate.js";
import { type TestDatabase, freshDatabase } from "../helpers/mysql.js";
import { TEST_PEPPER } from "../helpers/server.js";

const run = promisify(execFile);
const MIGRATIONS = readdirSync(migrationsDirectory()).filter((f) => f.endsWith(".sql")).sort();
const SERVER_URL = process.env.MYSQL_TEST_URL ?? "mysql://root@127.0.0.1:3306";

async function migrateCli(url: string, ...flags: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run("node_modules/.bin/tsx", ["src/main.ts", "--migrate", ...flags], {
      // MYSQL_URL is all it needs.
      env: { PATH: process.env.PATH, MYSQL_URL: url },
      timeout: 60_000,
    });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: e.code ?? -1, stdout: e.stdout ?? "", stderr: e.stderr ?? "" };
  }
}

function config(url: string, env: Record<string, string> = {}) {
  return loadConfig({ MYSQL_URL: url, KEY_PEPPER: TEST_PEPPER, ALLOW_UNAUTHENTICATED_CALLERS: "true", ...env }, { dev: false });
}

describe("npm run migrate, and a service without DDL rights", () => {
  let db: TestDatabase;
  const user = `apikeys_dml_${randomBytes(4).toString("hex")}`;
  const password = randomBytes(12).toString("hex");
  let admin: mysql.Connection;

  beforeAll(async () => {
    db = await freshDatabase();
    admin = await mysql.createConnection(SERVER_URL);
  });
  afterAll(async () => {
    await admin?.query(`DROP USER IF EXISTS '${user}'@'%'`);
    await admin?.end();
    await db?.drop();
  });

  it("--check says every migration is pending on an empty server, with exit code 3", async () => {
    const check = await migrateCli(db.url, "--check");
    expect(check.code).toBe(3);
    expect(check.stdout).toContain(`pending: ${MIGRATIONS.join(", ")}`);
  }, 60_000);

  it("refuses to start with MIGRATE_ON_START=false while migrations are pending, saying which", async () => {
    await db.create();
    const refused = await openStore(config(db.url, { MIGRATE_ON_START: "false" })).catch((err: unknown) => err);
    expect(refused).toBeInstanceOf(SchemaBehindError);
    expect((refused as Error).message).toMatch(new RegExp(`${MIGRATIONS.length} migration\\(s\\) pending \\(001_initial\\.sql, .*\\).*npm run migrate`));
  });

  it("applies them; --check then exits 0", async () => {
    const applied = await migrateCli(db.url);
    expect(applied.code).toBe(0);
    expect(applied.stdout).toContain(`migrations applied: ${MIGRATIONS.join(", ")}`);
    const check = await migrateCli(db.url, "--check");
    expect(check.code).toBe(0);
    expect(check.stdout).toContain("none pending");
  }, 120_000);

  it("serves with a user that may read and write rows but not change the schema", async () => {
    await admin.query(`CREATE USER '${user}'@'%' IDENTIFIED BY '${password}'`);
    await admin.query(`GRANT SELECT, INSERT, UPDATE, DELETE ON \`${db.name}\`.* TO '${user}'@'%'`);
    const url = new URL(db.url);
    url.username = user;
    url.password = password;
    // With DDL at start, this user cannot start the service.
    await expect(openStore(config(url.toString()))).rejects.toThrow(/denied/i);
    const store = await openStore(config(url.toString(), { MIGRATE_ON_START: "false" }));
    try {
      const { key } = await store.createKey({
        key: {
          id: "key_nodll",
          organizationId: "org_nodll",
          projectId: "",
          name: "",
          prefix: "sk",
          preview: "p",
          scopes: [],
          createdBy: "u",
          createTime: 1,
          updateTime: 1,
          expireTime: null,
          lastUsedTime: null,
          revokeTime: null,
          revokedBy: "",
          revokeReason: "",
          rotateTime: null,
          previousSecretExpireTime: null,
          metadata: {},
          limits: null,
        },
        hash: randomBytes(32),
        enrollRole: Role.OWNER,
        requestId: "",
        audit: {
          id: "evt_nodll",
          organizationId: "org_nodll",
          time: 1,
          actorUserId: "u",
          actorRole: Role.OWNER,
          caller: "t",
          action: "key.create",
          keyId: "key_nodll",
          details: {},
        },
      });
      expect(await store.getKey("org_nodll", key.id)).toMatchObject({ id: "key_nodll" });
    } finally {
      await store.close();
    }
  });
});
