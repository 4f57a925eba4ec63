// Schema migrations: the numbered .sql files in src/store/migrations, applied
// in order at start-up and recorded in schema_migrations. Several instances may
// start at once, so the whole run holds a named server lock.
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
  const database = decodeURIComponent(server.pathname.replace(/^\/+/, ""));
  if (database === "") throw new Error("the MySQL URL names no database (mysql://user@host:port/<database>)");
  server.pathname = "";

  const directory = migrationsDirectory();
  const files = (await readdir(directory)).filter((f) => f.endsWith(".sql")).sort();
  // A misnamed file would otherwise be skipped, or applied out of order, without a word.
  const misnamed = files.filter((f) => !MIGRATION_FILE.test(f));
  if (misnamed.length > 0) throw new Error(`migrations must be named like 001_name.sql: ${misnamed.join(", ")}`);
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

function quoteName(name: string): string {
  return `\`${name.replaceAll("`", "``")}\``;
}
