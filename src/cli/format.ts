// Reading durations and times from the command line, and writing keys for people.
import { type Duration, type Timestamp, durationFromMs, timestampFromMs, timestampMs } from "@bufbuild/protobuf/wkt";
import ms from "ms";
import { type ApiKey, KeyState } from "../../gen/apikeys/v1/apikeys_pb.js";
import { CliError, EXIT } from "./exit-codes.js";
import { printable } from "./printable.js";

/**
 * "30d", "12h", "90m", "1w" (the `ms` package's syntax, as in jsonwebtoken's
 * expiresIn), or "0". A bare number other than 0 is refused: `ms` would read
 * it as milliseconds, which nobody means.
 */
export function parseDuration(option: string, text: string): Duration {
  const t = text.trim();
  let value: number | undefined;
  if (t === "0") value = 0;
  // ms() answers undefined (despite its types) for text it cannot read.
  else if (!/^[\d.]+$/.test(t)) value = ms(t as ms.StringValue) as number | undefined;
  if (value === undefined || !Number.isFinite(value) || value < 0) {
    throw new CliError(`${option}: "${text}" is not a duration (e.g. 30d, 12h, 90m, 0)`, EXIT.USAGE);
  }
  return durationFromMs(value);
}

export type Expiration = { case: "expireTime"; value: Timestamp } | { case: "ttl"; value: Duration };

/** --expires: a lifetime ("30d") or an absolute RFC 3339 time ("2027-01-01T00:00:00Z"). */
export function parseExpiration(text: string): Expiration {
  if (/^\d{4}-\d{2}-\d{2}/.test(text)) {
    const t = Date.parse(text);
    if (Number.isNaN(t)) throw new CliError(`--expires: "${text}" is not a valid time (e.g. 2027-01-01T00:00:00Z)`, EXIT.USAGE);
    return { case: "expireTime", value: timestampFromMs(t) };
  }
  return { case: "ttl", value: parseDuration("--expires", text) };
}

/** "a,b c" → ["a", "b", "c"], for options that take a list and may be repeated. */
export function collectList(value: string, previous: string[] = []): string[] {
  return [...previous, ...value.split(/[\s,]+/).filter((s) => s !== "")];
}

const relative = new Intl.RelativeTimeFormat("en", { numeric: "always" });
const UNITS: [Intl.RelativeTimeFormatUnit, number][] = [
  ["year", 365 * 86_400_000],
  ["month", 30 * 86_400_000],
  ["week", 7 * 86_400_000],
  ["day", 86_400_000],
  ["hour", 3_600_000],
  ["minute", 60_000],
];

/** "3 days ago", "in 2 hours", "just now": the largest whole unit, rounded towards now. */
export function relativeTime(time: Timestamp | undefined, now: number, never = "never"): string {
  if (time === undefined) return never;
  const diff = timestampMs(time) - now;
  for (const [unit, size] of UNITS) {
    if (Math.abs(diff) >= size) return relative.format(Math.trunc(diff / size), unit);
  }
  return Math.abs(diff) < 10_000 ? "just now" : relative.format(Math.trunc(diff / 1000), "second");
}

/** An exact UTC time for people, e.g. "2027-01-01 00:00:00 UTC". */
export function exactTime(time: Timestamp): string {
  return `${new Date(timestampMs(time)).toISOString().replace("T", " ").replace(/\.\d+Z$/, "")} UTC`;
}

export function status(key: ApiKey, now: number): string {
  if (key.state === KeyState.ACTIVE && key.expireTime) return `active, expires ${relativeTime(key.expireTime, now)}`;
  return KeyState[key.state].toLowerCase();
}

/** `key_… "name"`, how a key is named in messages. */
export function describeKey(key: ApiKey | undefined): string {
  if (!key) return "key";
  return key.name ? `${printable(key.id)} "${printable(key.name)}"` : printable(key.id);
}

/** Plain columns (like kubectl or gh): easy to read, and to grep or awk. Cells are made printable here. */
export function table(header: string[], cells: string[][]): string {
  const rows = cells.map((r) => r.map(printable));
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]))).join("  ");
  return [line(header), ...rows.map(line)].join("\n") + "\n";
}

export function truncate(text: string, max: number): string {
  return text.length <= max ? text : `${text.slice(0, max - 1)}…`;
}

/** The one place a secret is printed: set apart so that it is seen, and said to be shown once. */
export function secretBlock(secret: string): string {
  return [
    "",
    "Secret (shown only this once; store it now, it cannot be retrieved later):",
    "",
    `    ${secret}`,
    "",
    "",
  ].join("\n");
}
