// Schema migrations: the numbered .sql files in src/store/migrations, applied
// in order and recorded in schema_migrations, at start-up (MIGRATE_ON_START,
// the default) or by an operator (`npm run migrate`; `-- --check` says whether
// any are pending). Several instances may start at once, so the whole run
// holds a named server lock. A service started with MIGRATE_ON_START=false
// only reads schema_migrations (pendingMigrations) and refuses to start on a
// schema that is behind. On Vitess, apply them with online DDL (docs/vitess.md).
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { readFile, readdir } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import mysql from "mysql2/promise";
import type { RowDataPacket } from "mysql2/promise";

const MIGRATION_FILE = /^\d{3}_[a-z0-9_]+\.sql$/;
/** Long enough for another instance's migration (an ALTER of a large table) to finish. */
const LOCK_TIMEOUT_SECONDS = 300;

/**
 * The migrations directory. tsc does not copy .sql files to dist/, so both
 * the tsx-run source and the compiled module resolve the source directory:
 * the project root is the nearest ancestor holding package.json.
 */
export function migrationsDirectory(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, "package.json"))) {
    const parent = dirname(dir);
    if (parent === dir) throw new Error(`no package.json above ${fileURLToPath(import.meta.url)}`);
    dir = parent;
  }
  return join(dir, "src", "store", "migrations");
}

/**
 * Why the service cannot run on a server with these settings, or null.
 * CreateKey's transactions run READ COMMITTED (see insertKeys in
 * mysql-store.ts), and InnoDB refuses writes at that level while the binary
 * log records statements: every CreateKey would fail. Said at start instead.
 */
export function unsupportedServer(logBin: boolean, binlogFormat: string): string | null {
  if (!logBin || binlogFormat.toUpperCase() !== "STATEMENT") return null;
  return "the MySQL server logs statements (binlog_format=STATEMENT), which InnoDB cannot do for the service's READ COMMITTED transactions; set binlog_format=ROW or MIXED (the defaults of MySQL and MariaDB)";
}

/**
 * Creates the database named in the URL if missing and applies the pending
 * migrations. Returns the versions (file names) it applied.
 */
export async function runMigrations(url: string, connectTimeout: number): Promise<string[]> {
  const server = new URL(url);
  const database = databaseOf(url);
  server.pathname = "";

  const directory = migrationsDirectory();
  const files = await migrationFiles();
  // The database may not exist yet, so connect to the server. One connection:
  // a GET_LOCK belongs to the session that took it.
  const conn = await mysql.createConnection({ uri: server.toString(), connectTimeout, multipleStatements: true });
  try {
    const [settings] = await conn.query<RowDataPacket[]>("SELECT @@log_bin AS logBin, @@binlog_format AS binlogFormat");
    const refusal = unsupportedServer(Number(settings[0].logBin) === 1, String(settings[0].binlogFormat));
    if (refusal !== null) throw new Error(refusal);
    await conn.query(`CREATE DATABASE IF NOT EXISTS ${quoteName(database)} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin`);
    await conn.query(`USE ${quoteName(database)}`);
    // Lock names are server-wide and at most 64 characters: hash the database name.
    const lock = `apikeys_migrate_${createHash("sha256").update(database).digest("hex").slice(0, 40)}`;
    const [locked] = await conn.query<RowDataPacket[]>("SELECT GET_LOCK(?, ?) AS ok", [lock, LOCK_TIMEOUT_SECONDS]);
    if (locked[0].ok !== 1) throw new Error(`timed out after ${LOCK_TIMEOUT_SECONDS}s waiting for another instance's migration`);
    try {
      await conn.query(
        `CREATE TABLE IF NOT EXISTS schema_migrations (
           version    VARCHAR(255) NOT NULL PRIMARY KEY,
           apply_time DATETIME(3)  NOT NULL
         ) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin`,
      );
      const [rows] = await conn.query<RowDataPacket[]>("SELECT version FROM schema_migrations");
      const done = new Set(rows.map((r) => r.version as string));
      const applied: string[] = [];
      for (const file of files) {
        if (done.has(file)) continue;
        await conn.query(await readFile(join(directory, file), "utf8"));
        await conn.query("INSERT INTO schema_migrations (version, apply_time) VALUES (?, UTC_TIMESTAMP(3))", [file]);
        applied.push(file);
      }
      return applied;
    } finally {
      await conn.query("SELECT RELEASE_LOCK(?)", [lock]);
    }
  } finally {
    // A connection that cannot end cleanly is broken; drop it.
    await conn.end().catch(() => conn.destroy());
  }
}

/** The migration files (names), in the order they apply. */
export async function migrationFiles(): Promise<string[]> {
  const files = (await readdir(migrationsDirectory())).filter((f) => f.endsWith(".sql")).sort();
  // A misnamed file would otherwise be skipped, or applied out of order, without a word.
  const misnamed = files.filter((f) => !MIGRATION_FILE.test(f));
  if (misnamed.length > 0) throw new Error(`migrations must be named like 001_name.sql: ${misnamed.join(", ")}`);
  return files;
}

/** The migrations not in `applied` (the versions schema_migrations holds), in order. */
export async function pendingMigrations(applied: readonly string[]): Promise<string[]> {
  const done = new Set(applied);
  return (await migrationFiles()).filter((f) => !done.has(f));
}

/** A pending migration's SQL, e.g. to apply it through vtgate or Vitess online DDL. */
export function migrationSql(file: string): Promise<string> {
  return readFile(join(migrationsDirectory(), file), "utf8");
}

/**
 * What `npm run migrate -- --check` reports: the versions recorded in the
 * URL's database and those pending. Reads only (no DDL, no lock): a missing
 * database or schema_migrations table means every migration is pending.
 */
export async function migrationStatus(url: string, connectTimeout: number): Promise<{ applied: string[]; pending: string[] }> {
  databaseOf(url);
  let applied: string[] = [];
  const conn = await mysql.createConnection({ uri: url, connectTimeout }).catch((err: unknown) => {
    if ((err as { code?: string }).code === "ER_BAD_DB_ERROR") return null;
    throw err;
  });
  if (conn !== null) {
    try {
      applied = await appliedVersions(conn);
    } finally {
      await conn.end().catch(() => conn.destroy());
    }
  }
  return { applied, pending: await pendingMigrations(applied) };
}

/** The versions in schema_migrations ([] when the table does not exist yet). */
export async function appliedVersions(db: { query: (sql: string) => Promise<unknown> }): Promise<string[]> {
  try {
    const [rows] = (await db.query("SELECT version FROM schema_migrations")) as [RowDataPacket[]];
    return rows.map((r) => r.version as string);
  } catch (err) {
    if ((err as { code?: string }).code === "ER_NO_SUCH_TABLE") return [];
    throw err;
  }
}

/** Why the service refuses to start with MIGRATE_ON_START=false: the schema is behind this build. */
export class SchemaBehindError extends Error {
  constructor(readonly pending: readonly string[]) {
    super(
      `the database schema is behind this version of the service: ${pending.length} migration(s) pending (${pending.join(", ")}). ` +
        "Apply them with `npm run migrate` (on Vitess: docs/vitess.md), or start with MIGRATE_ON_START=true.",
    );
    this.name = "SchemaBehindError";
  }
}

function databaseOf(url: string): string {
  const database = decodeURIComponent(new URL(url).pathname.replace(/^\/+/, ""));
  if (database === "") throw new Error("the MySQL URL names no database (mysql://user@host:port/<database>)");
  return database;
}

function quoteName(name: string): string {
  return `\`${name.replaceAll("`", "``")}\``;
}
