// Every rule of "is this key valid for this call", in one place and pure (no
// I/O, no clock of its own, no cache). Read top to bottom, a verification is:
//
//   1. revoked?                         → REVOKED      (stateAtLoad)
//   2. past its expiry or its secret's? → EXPIRED      (expiryOf, isExpired)
//   3. organization's API access off,
//      or the creator no longer a member → DISABLED    (stateAtLoad)
//   4. lacks a required scope?          → INSUFFICIENT_SCOPE (grants)
//   5. otherwise VALID; then usage limits, for keys that have them
//      → RATE_LIMITED / USAGE_EXCEEDED  (usageCode; counted by the UsageLimiter)
//
// The Verifier (verifier.ts) applies these to what the cache or the store
// gives it; the verify cache keeps what stateAtLoad, expiryOf and scopeRules
// computed, so a cached call runs only `verdict`.
import { KeyState, VerifyCode } from "../../gen/apikeys/v1/apikeys_pb.js";
import type { UsageVerdict } from "./ports.js";
import type { VerifyRecord } from "./records.js";

/** The code a key has as of its load, before the clock and the call's scopes: REVOKED, DISABLED or VALID. */
export function stateAtLoad(record: VerifyRecord): VerifyCode {
  if (record.key.revokeTime !== null) return VerifyCode.REVOKED;
  // The organization's switch, and the creator's membership: a key acts as its creator.
  if (!record.orgEnabled || record.memberRole === null) return VerifyCode.DISABLED;
  return VerifyCode.VALID;
}

/** When the secret stops working: the key's expiry or this secret's (a rotated-out secret's grace), whichever is first; null for never. */
export function expiryOf(record: VerifyRecord): number | null {
  const key = record.key.expireTime;
  const secret = record.secretExpireTime;
  if (key === null) return secret;
  return secret === null ? key : Math.min(key, secret);
}

/** The one expiry rule: an expiry time is reached at that very millisecond. */
export function isExpired(expireTime: number | null, now: number): boolean {
  return expireTime !== null && now >= expireTime;
}

/** The state a key is shown in: ACTIVE, REVOKED, or EXPIRED once past its expire_time. */
export function keyState(revokeTime: number | null, expireTime: number | null, now: number): KeyState {
  if (revokeTime !== null) return KeyState.REVOKED;
  if (isExpired(expireTime, now)) return KeyState.EXPIRED;
  return KeyState.ACTIVE;
}

/**
 * The state an answer shows its key in: an EXPIRED answer shows an active key
 * as expired (the secret may be what expired, not the key).
 */
export function answeredKeyState(state: KeyState, code: VerifyCode): KeyState {
  return code === VerifyCode.EXPIRED && state === KeyState.ACTIVE ? KeyState.EXPIRED : state;
}

/**
 * The decision for one call: the state as of load, the clock and the call's
 * required scopes. No allocation: it runs on every cached verification.
 */
export function verdict(loaded: VerifyCode, expireTime: number | null, scopes: ScopeRules, required: readonly string[], now: number): VerifyCode {
  if (loaded === VerifyCode.REVOKED) return loaded;
  if (isExpired(expireTime, now)) return VerifyCode.EXPIRED;
  if (loaded === VerifyCode.DISABLED) return loaded;
  if (!scopes.all) {
    for (let i = 0; i < required.length; i++) if (!grants(scopes, required[i])) return VerifyCode.INSUFFICIENT_SCOPE;
  }
  return VerifyCode.VALID;
}

const USAGE_CODES: Record<UsageVerdict, VerifyCode> = {
  ok: VerifyCode.VALID,
  rate_limited: VerifyCode.RATE_LIMITED,
  usage_exceeded: VerifyCode.USAGE_EXCEEDED,
};

/** The code of a VALID key once its usage limits had their say. */
export function usageCode(verdict: UsageVerdict): VerifyCode {
  return USAGE_CODES[verdict];
}

// Scopes. Syntax: "documents:read", "documents:*", "*", "org/projects.write"…
// Meaning: a key without scopes, or with "*", acts with its creator's full
// access; "x:*" grants every scope that starts with "x:"; any other scope
// grants exactly itself.
const SCOPE_PATTERN = /^(\*|[A-Za-z0-9_.\/-]+(:[A-Za-z0-9_.\/-]+)*(:\*)?)$/;

/** Whether `s` is a scope a key may hold (the syntax above). */
export function isScope(s: string): boolean {
  return SCOPE_PATTERN.test(s);
}

/** A key's scopes, parsed for matching. */
export interface ScopeRules {
  /** Exact scopes, and prefixes of "x:*" wildcards; all when the key has no scopes or "*". */
  readonly exact: readonly string[];
  readonly wildcards: readonly string[];
  readonly all: boolean;
}

export const ALL_SCOPES: ScopeRules = Object.freeze({ exact: Object.freeze([]), wildcards: Object.freeze([]), all: true });

export function scopeRules(scopes: readonly string[]): ScopeRules {
  if (scopes.length === 0) return ALL_SCOPES;
  const exact: string[] = [];
  const wildcards: string[] = [];
  for (const s of scopes) {
    if (s === "*") return ALL_SCOPES;
    if (s.endsWith(":*")) wildcards.push(s.slice(0, -1)); // "documents:*" → "documents:"
    else exact.push(s);
  }
  return Object.freeze({ exact: Object.freeze(exact), wildcards: Object.freeze(wildcards), all: false });
}

/** Whether a key with these scopes may act with `scope`. */
export function grants(scopes: ScopeRules, scope: string): boolean {
  if (scopes.all) return true;
  // A key has a handful of scopes: a scan beats a Set, and costs no Set per scope list.
  if (scopes.exact.includes(scope)) return true;
  const wildcards = scopes.wildcards;
  for (let i = 0; i < wildcards.length; i++) if (scope.startsWith(wildcards[i])) return true;
  return false;
}

