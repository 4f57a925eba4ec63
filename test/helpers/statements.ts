// Records every statement the service sends to MySQL (through the pool's one
// seam, recordStatements in src/store/mysql-pool.ts) and says which of them a
// database sharded by organization could not route to one shard:
// - a statement on a sharded table whose organization is not given, by a
//   placeholder (`organization_id = ?`, `organization_id IN (?)`, an INSERT's
//   organization_id column) or by a join on the organization to a table whose
//   organization is given;
// - a statement on the lookup table (key_lookup) not keyed by its hash;
// - a statement, or a transaction (START TRANSACTION … COMMIT/ROLLBACK on one
//   session), that names more than one organization.
// With `vtgate: true` it also reports statements vtgate does not take: SET
// TRANSACTION, ROW_COUNT(), GET_LOCK. (Several statements in one query cannot
// happen with pipelining off: the pool then has multipleStatements off, and
// MySQL refuses them.)
import { recordStatements } from "../../src/store/mysql-pool.js";
import { COUNT_HASHES_SQL, SCAN_HASHES_SQL } from "../../src/store/mysql-store.js";


/** Sharded tables and the column holding their organization. Tables not listed count as sharded by organization_id. */
const SHARD_COLUMN: Record<string, string> = { organizations: "id" };
/** Lookup tables (sharded by their own key), and that key. */
const LOOKUP_COLUMN: Record<string, string> = { key_lookup: "hash" };
/**
 * The statements allowed to read every shard, all background work off every
 * RPC's path (their cost is in docs/vitess.md): the outbox's poll for
 * invalidations nobody announced (src/broadcast/outbox.ts, once per
 * OUTBOX_POLL_MS), and the membership filter's load of every secret hash
 * (src/keys/membership.ts, at start and after a lost broadcast).
 */
const BACKGROUND_SCATTER: readonly ((sql: string) => boolean)[] = [
  (sql) => /^\s*SELECT\b[^;]*\bFROM\s+invalidation_outbox\s+WHERE\s+create_time\s*<\s*\?/i.test(sql),
  (sql) => sql === COUNT_HASHES_SQL || sql === SCAN_HASHES_SQL,
];
/** Tables outside the sharded keyspace. */
const UNSHARDED = new Set(["schema_migrations", "dual"]);

export interface Recorded {
  session: object;
  sql: string;
  values: readonly unknown[] | undefined;
}

export class StatementRecorder {
  readonly statements: Recorded[] = [];

  start(): this {
    recordStatements((session, sql, values) => {
      this.statements.push({ session, sql, values: values === undefined ? undefined : [...values] });
    });
    return this;
  }

  stop(): void {
    recordStatements(null);
  }

  /** Every problem found in the statements from..to (indexes), one line each (the statement's SQL shortened). */
  violations(options: { vtgate?: boolean; from?: number; to?: number } = {}): string[] {
    const problems = new Set<string>();
    const open = new Map<object, Set<string>>();
    for (const statement of this.statements.slice(options.from ?? 0, options.to)) {
      const { sql } = statement;
      const verb = sql.trim().split(/\s+/, 2).join(" ").toUpperCase();
      if (options.vtgate) {
        if (/\bSET\s+TRANSACTION\b/i.test(sql)) problems.add(`vtgate: SET TRANSACTION: ${short(sql)}`);
        if (/\bROW_COUNT\s*\(/i.test(sql)) problems.add(`vtgate: ROW_COUNT(): ${short(sql)}`);
        if (/\bGET_LOCK\s*\(/i.test(sql)) problems.add(`vtgate: GET_LOCK: ${short(sql)}`);
      }
      if (verb === "START TRANSACTION") {
        open.set(statement.session, new Set());
        continue;
      }
      if (verb === "COMMIT" || verb === "ROLLBACK") {
        const orgs = open.get(statement.session);
        open.delete(statement.session);
        if (orgs !== undefined && orgs.size > 1) problems.add(`transaction names ${orgs.size} organizations: ${[...orgs].slice(0, 3).join(", ")}…`);
        continue;
      }
      const analysis = analyse(sql, statement.values ?? []);
      for (const problem of analysis.problems) problems.add(`${problem}: ${short(sql)}`);
      if (analysis.organizations.size > 1) problems.add(`statement names ${analysis.organizations.size} organizations: ${short(sql)}`);
      const orgs = open.get(statement.session);
      if (orgs !== undefined) for (const o of analysis.organizations) orgs.add(o);
    }
    return [...problems];
  }

  /** How many statements named each table (to show the suites reached them). */
  tables(from = 0, to?: number): Map<string, number> {
    const counts = new Map<string, number>();
    for (const { sql } of this.statements.slice(from, to)) for (const { table } of tablesOf(sql)) counts.set(table, (counts.get(table) ?? 0) + 1);
    return counts;
  }
}

interface TableRef {
  table: string;
  alias: string;
}

const KEYWORDS = new Set(["SET", "WHERE", "ON", "JOIN", "LEFT", "INNER", "VALUES", "SELECT", "GROUP", "ORDER", "LIMIT", "FOR", "USING"]);

function tablesOf(sql: string): TableRef[] {
  const refs: TableRef[] = [];
  // Not the UPDATE of ON DUPLICATE KEY UPDATE.
  for (const m of sql.matchAll(/\b(?:FROM|JOIN|INTO|(?<!KEY\s+)UPDATE)\s+`?([A-Za-z_][\w]*)`?(?:\s+(?:AS\s+)?([A-Za-z_]\w*))?/gi)) {
    const table = m[1].toLowerCase();
    if (UNSHARDED.has(table)) continue;
    const alias = m[2] !== undefined && !KEYWORDS.has(m[2].toUpperCase()) ? m[2] : table;
    refs.push({ table, alias });
  }
  return refs;
}

/** Offsets of the placeholders in sql (statements here quote no "?"). */
function placeholders(sql: string): number[] {
  const at: number[] = [];
  for (let i = 0; i < sql.length; i++) if (sql[i] === "?") at.push(i);
  return at;
}

function analyse(sql: string, values: readonly unknown[]): { problems: string[]; organizations: Set<string> } {
  const refs = tablesOf(sql);
  const problems: string[] = [];
  const organizations = new Set<string>();
  if (refs.length === 0 || BACKGROUND_SCATTER.some((allowed) => allowed(sql))) return { problems, organizations };
  const marks = placeholders(sql);
  const valueAt = (offset: number): unknown => values[marks.indexOf(offset)];
  const addOrgs = (value: unknown) => {
    for (const v of Array.isArray(value) ? value : [value]) organizations.add(String(v));
  };

  const keyed = new Set<string>(); // aliases
  const column = (ref: TableRef) => LOOKUP_COLUMN[ref.table] ?? SHARD_COLUMN[ref.table] ?? "organization_id";
  const isLookup = (ref: TableRef) => ref.table in LOOKUP_COLUMN;

  // col = ? / col IN (?), qualified by the alias, or unqualified when one table is named.
  for (const ref of refs) {
    const qualifier = refs.length === 1 ? `(?:${escape(ref.alias)}\\.)?` : `${escape(ref.alias)}\\.`;
    const unqualified = refs.every((r) => r.alias === ref.alias) ? `(?:${escape(ref.alias)}\\.)?` : qualifier;
    const pattern = new RegExp(`(?<![\\w.])${unqualified}\`?${column(ref)}\`?\\s*(?:=\\s*\\?|IN\\s*\\(\\s*\\?\\s*\\))`, "gi");
    for (const m of sql.matchAll(pattern)) {
      keyed.add(ref.alias);
      if (!isLookup(ref)) addOrgs(valueAt(m.index + m[0].lastIndexOf("?")));
    }
  }

  // INSERT INTO t (cols) VALUES (…), (…) or INSERT INTO t (cols) SELECT …: the key column's values.
  const insert = /^\s*INSERT\s+(?:IGNORE\s+)?INTO\s+`?(\w+)`?\s*\(([^)]*)\)\s*(VALUES|SELECT)/i.exec(sql);
  if (insert !== null) {
    const ref = refs.find((r) => r.table === insert[1].toLowerCase());
    if (ref !== undefined) {
      const columns = insert[2].split(",").map((c) => c.trim().replace(/`/g, "").toLowerCase());
      const index = columns.indexOf(column(ref));
      const bodyStart = insert.index + insert[0].length;
      const tuples = insert[3].toUpperCase() === "VALUES" ? topLevelGroups(sql, bodyStart) : [selectList(sql, bodyStart)];
      if (index >= 0 && tuples.length > 0) {
        let all = true;
        for (const [start, items] of tuples) {
          const item = items[index];
          if (item === undefined || item.text.trim() !== "?") {
            all = false;
            continue;
          }
          if (!isLookup(ref)) addOrgs(valueAt(start + item.offset + item.text.indexOf("?")));
        }
        if (all) keyed.add(ref.alias);
      }
    }
  }

  // Joins on the organization to a keyed table key the other side too.
  for (let changed = true; changed; ) {
    changed = false;
    for (const m of sql.matchAll(/(\w+)\.(\w+)\s*=\s*(\w+)\.(\w+)/g)) {
      const sides = [
        [m[1], m[2]],
        [m[3], m[4]],
      ];
      for (const [i, j] of [
        [0, 1],
        [1, 0],
      ]) {
        const [alias, col] = sides[i];
        const [otherAlias, otherCol] = sides[j];
        const ref = refs.find((r) => r.alias === alias);
        const other = refs.find((r) => r.alias === otherAlias);
        if (ref === undefined || other === undefined || keyed.has(alias) || !keyed.has(otherAlias)) continue;
        if (isLookup(ref) || isLookup(other)) continue;
        if (col.toLowerCase() === column(ref) && otherCol.toLowerCase() === column(other)) {
          keyed.add(alias);
          changed = true;
        }
      }
    }
  }

  for (const ref of refs) {
    if (keyed.has(ref.alias)) continue;
    problems.push(isLookup(ref) ? `lookup table ${ref.table} not keyed by ${column(ref)}` : `${ref.table} without its sharding key (${column(ref)})`);
  }
  return { problems, organizations };
}

interface Item {
  /** Offset within the group's text (after its opening parenthesis). */
  offset: number;
  text: string;
}

/** The parenthesized groups from `from` on, at depth 0, each as [offset of its text, items split on top-level commas]. */
function topLevelGroups(sql: string, from: number): [number, Item[]][] {
  const groups: [number, Item[]][] = [];
  let i = from;
  for (;;) {
    while (i < sql.length && /[\s,]/.test(sql[i])) i++;
    if (sql[i] !== "(") return groups;
    const start = i + 1;
    let depth = 1;
    let j = start;
    for (; j < sql.length && depth > 0; j++) {
      if (sql[j] === "(") depth++;
      else if (sql[j] === ")") depth--;
      else if (sql[j] === "'") j = endOfString(sql, j);
    }
    groups.push([start, splitItems(sql.slice(start, j - 1))]);
    i = j;
  }
}

/** An INSERT … SELECT's select list (up to FROM), as one group. */
function selectList(sql: string, from: number): [number, Item[]] {
  const end = sql.slice(from).search(/\bFROM\b/i);
  const text = end < 0 ? sql.slice(from) : sql.slice(from, from + end);
  return [from, splitItems(text)];
}

function splitItems(text: string): Item[] {
  const items: Item[] = [];
  let depth = 0;
  let start = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === "(") depth++;
    else if (c === ")") depth--;
    else if (c === "'") i = endOfString(text, i);
    else if (c === "," && depth === 0) {
      items.push({ offset: start, text: text.slice(start, i) });
      start = i + 1;
    }
  }
  items.push({ offset: start, text: text.slice(start) });
  return items;
}

function endOfString(text: string, quote: number): number {
  for (let i = quote + 1; i < text.length; i++) {
    if (text[i] === "\\") i++;
    else if (text[i] === "'") return i;
  }
  return text.length;
}

function escape(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

function short(sql: string): string {
  const flat = sql.replace(/\s+/g, " ").trim();
  return flat.length > 160 ? `${flat.slice(0, 157)}…` : flat;
}
