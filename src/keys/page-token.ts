// AIP-158 page tokens: opaque to callers, bound to the filters they were
// issued for, so a token cannot be replayed against another query.
import { createHash } from "node:crypto";
import { invalidArgument } from "./errors.js";
import { LIMITS } from "./validation.js";

function fingerprint(filters: readonly (string | boolean)[]): string {
  return createHash("sha256").update(JSON.stringify(filters)).digest("base64url").slice(0, 12);
}

export function encodePageToken(position: string | null, filters: readonly (string | boolean)[]): string {
  if (position === null) return "";
  return Buffer.from(JSON.stringify({ p: position, f: fingerprint(filters) })).toString("base64url");
}

/** The position a token points at, or null for an empty token (first page). */
export function decodePageToken(token: string, filters: readonly (string | boolean)[]): string | null {
  if (token === "") return null;
  if (token.length > LIMITS.pageTokenLength) throw invalidArgument("page_token", "is not a token this service issued");
  let parsed: unknown;
  try {
    parsed = JSON.parse(Buffer.from(token, "base64url").toString("utf8"));
  } catch {
    throw invalidArgument("page_token", "is not a token this service issued");
  }
  const t = parsed as { p?: unknown; f?: unknown };
  if (typeof t?.p !== "string" || !/^\d{1,20}$/.test(t.p) || typeof t.f !== "string") {
    throw invalidArgument("page_token", "is not a token this service issued");
  }
  if (t.f !== fingerprint(filters)) {
    throw invalidArgument("page_token", "was issued for a request with different filters");
  }
  return t.p;
}
