// The rules of "is this key valid for this call" (src/keys/verification.ts), apart from the cache and the wire.
import { describe, expect, it } from "vitest";
import { KeyState, Role, VerifyCode } from "../../gen/apikeys/v1/apikeys_pb.js";
import type { VerifyRecord } from "../../src/keys/records.js";
import { expiryOf, grants, isScope, keyState, scopeRules, stateAtLoad, verdict } from "../../src/keys/verification.js";
import { keyRecord } from "../helpers/records.js";

const NOW = 1_800_000_000_000;

function rec(key: Partial<VerifyRecord["key"]> = {}, extra: Partial<VerifyRecord> = {}): VerifyRecord {
  return { key: keyRecord(key), secretExpireTime: null, memberRole: Role.MEMBER, orgEnabled: true, ...extra };
}

describe("verification rules", () => {
  it("decide in order: revoked, expired, disabled, scopes", () => {
    const revokedDisabled = rec({ revokeTime: NOW - 1, expireTime: NOW - 1 }, { orgEnabled: false });
    expect(verdict(stateAtLoad(revokedDisabled), expiryOf(revokedDisabled), scopeRules([]), [], NOW)).toBe(VerifyCode.REVOKED);
    const expiredDisabled = rec({ expireTime: NOW }, { memberRole: null });
    expect(verdict(stateAtLoad(expiredDisabled), expiryOf(expiredDisabled), scopeRules([]), [], NOW)).toBe(VerifyCode.EXPIRED);
    expect(verdict(stateAtLoad(expiredDisabled), expiryOf(expiredDisabled), scopeRules([]), [], NOW - 1)).toBe(VerifyCode.DISABLED);
    const scoped = rec({ scopes: ["documents:read"] });
    expect(verdict(stateAtLoad(scoped), null, scopeRules(scoped.key.scopes), ["documents:write"], NOW)).toBe(VerifyCode.INSUFFICIENT_SCOPE);
    expect(verdict(stateAtLoad(scoped), null, scopeRules(scoped.key.scopes), ["documents:read"], NOW)).toBe(VerifyCode.VALID);
  });

  it("expire a secret at the earlier of the key's and the secret's expiry", () => {
    expect(expiryOf(rec({ expireTime: NOW + 5 }, { secretExpireTime: NOW + 3 }))).toBe(NOW + 3);
    expect(expiryOf(rec({ expireTime: NOW + 5 }))).toBe(NOW + 5);
    expect(expiryOf(rec({}, { secretExpireTime: NOW + 3 }))).toBe(NOW + 3);
    expect(expiryOf(rec())).toBeNull();
    expect(keyState(null, NOW, NOW)).toBe(KeyState.EXPIRED);
    expect(keyState(null, NOW + 1, NOW)).toBe(KeyState.ACTIVE);
    expect(keyState(NOW - 1, NOW + 1, NOW)).toBe(KeyState.REVOKED);
  });

  it("match scopes: none or * grant all, x:* grants x:…, others exactly themselves", () => {
    expect(grants(scopeRules([]), "anything")).toBe(true);
    expect(grants(scopeRules(["a:b", "*"]), "anything")).toBe(true);
    const rules = scopeRules(["documents:*", "billing:read"]);
    expect(grants(rules, "documents:write")).toBe(true);
    expect(grants(rules, "documents")).toBe(false);
    expect(grants(rules, "billing:read")).toBe(true);
    expect(grants(rules, "billing:write")).toBe(false);
    for (const ok of ["documents:read", "documents:*", "*", "org/projects.write"]) expect(isScope(ok), ok).toBe(true);
    for (const bad of ["documents:", "a b", "*:read", ""]) expect(isScope(bad), bad).toBe(false);
  });
});
