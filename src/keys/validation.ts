// Input rules for every request, in one place. Each failure is an
// INVALID_ARGUMENT naming the field, raised before anything is written.
// Every string, list and map has a maximum here (and the whole message has
// MAX_MESSAGE_BYTES at the transport); every number a range; enums only
// their known values. These rules stay in code rather than as protovalidate
// annotations in the proto: see "Input limits" in docs/security.md.
import type { Duration, Timestamp } from "@bufbuild/protobuf/wkt";
import { type Actor, type Limits, Role } from "../../gen/apikeys/v1/apikeys_pb.js";
import { invalidArgument } from "./errors.js";
import { containsSecret, isValidPrefix } from "./key-format.js";
import { type LimitsRecord, normalizeLimits } from "./records.js";
import { isScope } from "./verification.js";

export const LIMITS = {
  idLength: 128,
  nameLength: 200,
  reasonLength: 500,
  scopes: 64,
  scopeLength: 128,
  metadataEntries: 32,
  metadataKeyLength: 64,
  metadataValueLength: 512,
  requestIdLength: 128,
  keyLength: 256,
  defaultPageSize: 50,
  maxPageSize: 1000,
  pageTokenLength: 512,
  maxGraceMs: 30 * 24 * 3600 * 1000,
  /** Any duration (a ttl): far beyond real use, and small enough that now + it is still a valid timestamp. */
  maxDurationMs: 100 * 365.25 * 24 * 3600 * 1000,
  maxCredits: Number.MAX_SAFE_INTEGER,
} as const;

// Ids are opaque to us but must be printable and bounded.
const ID_PATTERN = /^[A-Za-z0-9._:@|\/+=-]+$/;

export function requireId(field: string, value: string): string {
  if (value === "") throw invalidArgument(field, "is required");
  return optionalId(field, value);
}

export function optionalId(field: string, value: string): string {
  if (value.length > LIMITS.idLength) throw invalidArgument(field, `must be at most ${LIMITS.idLength} characters`);
  if (value !== "" && !ID_PATTERN.test(value)) {
    throw invalidArgument(field, "may contain only letters, digits and . _ : @ | / + = -");
  }
  return refuseSecret(field, value);
}

/**
 * Refuses a value that contains a well-formed API key — a secret pasted into
 * the wrong field (a key id, a name, a reason) — so that it is never stored,
 * audited, logged or echoed in an error.
 */
function refuseSecret(field: string, value: string): string {
  if (containsSecret(value)) {
    throw invalidArgument(field, "contains an API key secret; secrets are never stored, so it is refused (and not repeated here)");
  }
  return value;
}

export function requireActor(actor: Actor | undefined): Actor {
  if (!actor) throw invalidArgument("actor", "is required (the user on whose behalf the call is made)");
  requireId("actor.user_id", actor.userId);
  return { ...actor, role: requireRoleValue("actor.role", actor.role) };
}

export function requireRoleValue(field: string, role: Role): Role {
  if (role === Role.UNSPECIFIED) throw invalidArgument(field, "is required");
  if (Role[role] === undefined) throw invalidArgument(field, `unknown role ${role}`);
  return role;
}

export function checkText(field: string, value: string, max: number): string {
  if (value.length > max) throw invalidArgument(field, `must be at most ${max} characters`);
  if (/[\u0000-\u0008\u000b\u000c\u000e-\u001f]/.test(value)) throw invalidArgument(field, "must not contain control characters");
  return refuseSecret(field, value);
}

export function checkPrefix(prefix: string): string {
  if (!isValidPrefix(prefix)) {
    throw invalidArgument("prefix", "must match [a-z][a-z0-9_]{0,15} (lower-case letter, then up to 15 lower-case letters, digits or _)");
  }
  return prefix;
}

/** How many scopes, and how long each: all a scope list a call asks for must satisfy (VerifyKey's required_scopes). */
export function checkScopeBounds(field: string, scopes: readonly string[]): void {
  if (scopes.length > LIMITS.scopes) throw invalidArgument(field, `at most ${LIMITS.scopes} scopes`);
  for (let i = 0; i < scopes.length; i++) {
    const len = scopes[i].length;
    if (len === 0 || len > LIMITS.scopeLength) throw invalidArgument(field, `each scope must be 1 to ${LIMITS.scopeLength} characters`);
  }
}

/** Validates and de-duplicates the scopes a key is given, keeping their order (syntax: verification.ts). */
export function checkScopes(field: string, scopes: readonly string[]): string[] {
  checkScopeBounds(field, scopes);
  for (const s of scopes) {
    refuseSecret(field, s);
    if (!isScope(s)) {
      throw invalidArgument(field, `"${s}" is not a scope (e.g. "documents:read", "documents:*")`);
    }
  }
  return [...new Set(scopes)];
}

export function checkMetadata(field: string, metadata: Record<string, string>): Record<string, string> {
  const entries = Object.entries(metadata);
  if (entries.length > LIMITS.metadataEntries) throw invalidArgument(field, `at most ${LIMITS.metadataEntries} entries`);
  for (const [k, v] of entries) {
    if (k.length === 0 || k.length > LIMITS.metadataKeyLength) {
      throw invalidArgument(field, `keys must be 1 to ${LIMITS.metadataKeyLength} characters`);
    }
    // The key is checked first, so that the field name in a message about its value is printable and no secret.
    checkText(`${field} keys`, k, LIMITS.metadataKeyLength);
    checkText(`${field}["${k}"]`, v, LIMITS.metadataValueLength);
  }
  return { ...metadata };
}

export function checkLimits(field: string, limits: Limits | undefined): LimitsRecord | null {
  if (!limits) return null;
  const credits = limits.monthlyCredits;
  if (credits < 0n || credits > BigInt(LIMITS.maxCredits)) {
    throw invalidArgument(`${field}.monthly_credits`, `must be between 0 and ${LIMITS.maxCredits}`);
  }
  return normalizeLimits({
    requestsPerMinute: limits.requestsPerMinute,
    requestsPerDay: limits.requestsPerDay,
    monthlyCredits: Number(credits),
  });
}

export function checkPageSize(size: number): number {
  if (size < 0) throw invalidArgument("page_size", "must not be negative");
  if (size === 0) return LIMITS.defaultPageSize;
  return Math.min(size, LIMITS.maxPageSize);
}

export function durationMs(field: string, d: Duration | undefined): number {
  if (!d) return 0;
  if (d.seconds < 0n || d.nanos < 0) throw invalidArgument(field, "must not be negative");
  if (d.nanos > 999_999_999) throw invalidArgument(field, "nanos must be at most 999999999");
  const ms = Number(d.seconds) * 1000 + Math.floor(d.nanos / 1e6);
  if (ms > LIMITS.maxDurationMs) throw invalidArgument(field, "must be at most 100 years");
  return ms;
}

export function timestampToMs(field: string, t: Timestamp): number {
  const ms = Number(t.seconds) * 1000 + Math.floor(t.nanos / 1e6);
  // Year 1 … 9999, the Timestamp's valid range.
  if (!Number.isFinite(ms) || ms < -62135596800000 || ms > 253402300799999 || t.nanos < 0 || t.nanos > 999_999_999) {
    throw invalidArgument(field, "is not a valid timestamp");
  }
  return ms;
}
