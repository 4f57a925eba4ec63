// deploy/vitess/vschema.json covers every table the migrations create, each
// sharded by the column the statement recorder (test/helpers/statements.ts)
// checks: its organization, or the secret's hash for the lookup table.
import { readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { migrationsDirectory } from "../../src/store/migrate.js";

const root = join(migrationsDirectory(), "..", "..", "..");
const vschema = JSON.parse(readFileSync(join(root, "deploy/vitess/vschema.json"), "utf8")) as {
  vindexes: Record<string, { type: string }>;
  tables: Record<string, { column_vindexes: { column: string; name: string }[] }>;
};
const meta = JSON.parse(readFileSync(join(root, "deploy/vitess/vschema-meta.json"), "utf8")) as { tables: Record<string, unknown> };

const created = readdirSync(migrationsDirectory())
  .filter((f) => f.endsWith(".sql"))
  .flatMap((f) => [...readFileSync(join(migrationsDirectory(), f), "utf8").matchAll(/CREATE TABLE (?:IF NOT EXISTS )?`?(\w+)`?/gi)].map((m) => m[1]));

describe("deploy/vitess/vschema.json", () => {
  it("names every table of the migrations (schema_migrations in the unsharded keyspace)", () => {
    expect(created.length).toBeGreaterThan(5);
    for (const table of created) expect(table in vschema.tables, table).toBe(true);
    expect(Object.keys(meta.tables)).toEqual(["schema_migrations"]);
    expect(created).not.toContain("schema_migrations"); // made by migrate.ts itself
  });

  it("shards every table by its organization with one vindex, and key_lookup by hash", () => {
    for (const [table, { column_vindexes }] of Object.entries(vschema.tables)) {
      const [primary] = column_vindexes;
      const expected = table === "key_lookup" ? "hash" : table === "organizations" ? "id" : "organization_id";
      expect(primary.column, table).toBe(expected);
      expect(primary.name, table).toBe(table === "key_lookup" ? "secret_hash" : "organization");
      expect(vschema.vindexes[primary.name], table).toBeDefined();
    }
  });
});
