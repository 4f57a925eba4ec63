// The api_keys table, defined once: each column's name and how a KeyRecord
// field is written to it and read back. The SELECT list, the row type, the
// INSERT values and the record mapping are all derived from KEY_TABLE.
import type { RowDataPacket } from "mysql2/promise";
import { type KeyRecord, type LimitsRecord, normalizeLimits } from "../keys/records.js";

type Field = keyof KeyRecord;
type FieldOf<T> = { [F in Field]: KeyRecord[F] extends T ? F : never }[Field];

/** How one column holds one field: kind says the column's type as mysql2 returns it. */
type Column =
  | { kind: "text"; field: FieldOf<string> }
  | { kind: "json"; field: "scopes" | "metadata" }
  | { kind: "time"; field: FieldOf<number> }
  | { kind: "optionalTime"; field: FieldOf<number | null> }
  | { kind: "limit"; limit: keyof LimitsRecord };

const text = (field: FieldOf<string>) => ({ kind: "text", field }) as const;
const json = (field: "scopes" | "metadata") => ({ kind: "json", field }) as const;
const time = (field: FieldOf<number>) => ({ kind: "time", field }) as const;
const optionalTime = (field: FieldOf<number | null>) => ({ kind: "optionalTime", field }) as const;
/** The three limit columns: all NULL for no limits (see normalizeLimits); 0 in one of them is that limit unlimited. */
const limit = (name: keyof LimitsRecord) => ({ kind: "limit", limit: name }) as const;

/** Every column of api_keys a KeyRecord is made of (seq and request_id are the store's own). */
export const KEY_TABLE = {
  id: text("id"),
  organization_id: text("organizationId"),
  project_id: text("projectId"),
  name: text("name"),
  prefix: text("prefix"),
  preview: text("preview"),
  scopes: json("scopes"),
  created_by: text("createdBy"),
  create_time: time("createTime"),
  update_time: time("updateTime"),
  expire_time: optionalTime("expireTime"),
  last_used_time: optionalTime("lastUsedTime"),
  revoke_time: optionalTime("revokeTime"),
  revoked_by: text("revokedBy"),
  revoke_reason: text("revokeReason"),
  rotate_time: optionalTime("rotateTime"),
  previous_secret_expire_time: optionalTime("previousSecretExpireTime"),
  metadata: json("metadata"),
  requests_per_minute: limit("requestsPerMinute"),
  requests_per_day: limit("requestsPerDay"),
  monthly_credits: limit("monthlyCredits"),
} satisfies Record<string, Column>;

type KeyColumn = keyof typeof KEY_TABLE;
type RowValue<C extends Column> = C extends { kind: "text" | "json" }
  ? string
  : C extends { kind: "time" }
    ? Date
    : C extends { kind: "optionalTime" }
      ? Date | null
      : // INT or BIGINT: the pool returns big numbers as strings.
        number | string | null;

/** A row of api_keys as the pool returns it, with the page position. */
export type KeyRow = RowDataPacket & { seq: string } & { [C in KeyColumn]: RowValue<(typeof KEY_TABLE)[C]> };

const COLUMNS = Object.keys(KEY_TABLE) as KeyColumn[];
const ENTRIES = Object.entries(KEY_TABLE) as [KeyColumn, Column][];

/** The SELECT list of a key, for the table aliased `k`. */
export const KEY_SELECT = ["seq", ...COLUMNS].map((c) => `k.${c}`).join(", ");

/** The columns insertValues fills, in order. */
export const KEY_INSERT_COLUMNS: readonly KeyColumn[] = COLUMNS;

/** The key's values for KEY_INSERT_COLUMNS. */
export function insertValues(key: KeyRecord): unknown[] {
  const limits = normalizeLimits(key.limits);
  return ENTRIES.map(([, column]) => write(column, key, limits));
}

/** The columns (name → value) that store these limits, for an UPDATE … SET ?. */
export function limitValues(limits: LimitsRecord | null): Record<string, number | null> {
  const stored = normalizeLimits(limits);
  const values: Record<string, number | null> = {};
  for (const [name, column] of ENTRIES) if (column.kind === "limit") values[name] = stored === null ? null : stored[column.limit];
  return values;
}

export function toKey(row: KeyRow): KeyRecord {
  const record: Record<string, unknown> = {};
  let limits: LimitsRecord | null = row.requests_per_minute === null ? null : { requestsPerMinute: 0, requestsPerDay: 0, monthlyCredits: 0 };
  for (const [name, column] of ENTRIES) {
    const value = row[name];
    switch (column.kind) {
      case "text":
        record[column.field] = value;
        break;
      case "json":
        record[column.field] = JSON.parse(value as string);
        break;
      case "time":
        record[column.field] = (value as Date).getTime();
        break;
      case "optionalTime":
        record[column.field] = value === null ? null : (value as Date).getTime();
        break;
      case "limit":
        if (limits !== null) limits[column.limit] = Number(value ?? 0);
        break;
    }
  }
  record.limits = limits;
  return record as unknown as KeyRecord;
}

function write(column: Column, key: KeyRecord, limits: LimitsRecord | null): unknown {
  switch (column.kind) {
    case "text":
      return key[column.field];
    case "json":
      return JSON.stringify(key[column.field]);
    case "time":
      return new Date(key[column.field]);
    case "optionalTime": {
      const ms = key[column.field];
      return ms === null ? null : new Date(ms);
    }
    case "limit":
      return limits === null ? null : limits[column.limit];
  }
}
