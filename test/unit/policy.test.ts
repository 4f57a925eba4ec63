import { describe, expect, it } from "vitest";
import { Role } from "../../gen/apikeys/v1/apikeys_pb.js";
import { ApiError, Status } from "../../src/keys/errors.js";
import {
  DEFAULT_POLICY,
  formatPolicy,
  mayRevokeCreatedBy,
  parsePolicy,
  parseRoleAliases,
  requireMayChange,
  requireRole,
  revocable,
} from "../../src/keys/policy.js";

describe("role policy", () => {
  it("parses the contract's default", () => {
    expect(parsePolicy(DEFAULT_POLICY)).toEqual({
      create: Role.MEMBER,
      view_all: Role.ADMIN,
      revoke_any: Role.ADMIN,
      revoke_own: Role.MEMBER,
      update_limits: Role.ADMIN,
      enroll: Role.OWNER,
    });
    // The contract's four rules alone give the same policy: the new ones default safely.
    expect(parsePolicy("create=member,view_all=admin,revoke_any=admin,revoke_own=member")).toEqual(parsePolicy(DEFAULT_POLICY));
  });

  it("parses update_limits and enroll, enroll=none included", () => {
    expect(parsePolicy("update_limits=owner,enroll=member")).toMatchObject({ update_limits: Role.OWNER, enroll: Role.MEMBER });
    expect(parsePolicy("enroll=none").enroll).toBeNull();
    expect(formatPolicy(parsePolicy("enroll=none"))).toMatch(/,enroll=none$/);
    expect(() => parsePolicy("update_limits=none")).toThrow(/unknown role "none"/);
  });

  it("parses Petra's, Keystroke's and Traversal's settings", () => {
    expect(formatPolicy(parsePolicy("create=admin,view_all=member,revoke_any=admin,revoke_own=admin"))).toBe(
      "create=admin,view_all=member,revoke_any=admin,revoke_own=admin,update_limits=admin,enroll=owner",
    );
    expect(parsePolicy("create=builder", parseRoleAliases("builder=member")).create).toBe(Role.MEMBER);
  });

  it("knows a product's own role names only as configured aliases", () => {
    expect(() => parsePolicy("create=builder")).toThrow(/unknown role "builder"/);
    expect(() => parseRoleAliases("admin=owner")).toThrow(/already a role/);
    expect(() => parseRoleAliases("builder=god")).toThrow(/unknown role "god"/);
    expect(() => parseRoleAliases("toString=member,x")).toThrow();
  });

  it("rejects unknown rules and roles with a message naming them", () => {
    expect(() => parsePolicy("create=god")).toThrow(/unknown role "god"/);
    expect(() => parsePolicy("delete=admin")).toThrow(/unknown rule "delete"/);
  });

  it("rejects names JavaScript objects inherit and malformed parts", () => {
    for (const bad of ["view_all=constructor", "create=__proto__", "toString=admin", "create", "create=admin=owner"]) {
      expect(() => parsePolicy(bad), bad).toThrow();
    }
  });

  it("denies a role below the rule with PERMISSION_DENIED naming the rule", () => {
    const policy = parsePolicy(DEFAULT_POLICY);
    expect(() => requireRole(policy, "create", Role.MEMBER, "creating a key")).not.toThrow();
    try {
      requireRole(policy, "create", Role.VIEWER, "creating a key");
      expect.unreachable();
    } catch (err) {
      expect(err).toBeInstanceOf(ApiError);
      expect((err as ApiError).code).toBe(Status.PERMISSION_DENIED);
      expect((err as ApiError).message).toContain("policy rule create");
    }
  });

  it("lets members revoke their own keys but not others' (Keystroke)", () => {
    const policy = parsePolicy("create=member,view_all=admin,revoke_any=admin,revoke_own=member");
    expect(() => requireMayChange(policy, "u1", Role.MEMBER, "u1", "revoking")).not.toThrow();
    expect(() => requireMayChange(policy, "u1", Role.MEMBER, "u2", "revoking")).toThrow(/revoke_any/);
    expect(() => requireMayChange(policy, "u1", Role.ADMIN, "u2", "revoking")).not.toThrow();
  });

  it("lets only admins revoke, even their own (Petra)", () => {
    const policy = parsePolicy("create=admin,view_all=member,revoke_any=admin,revoke_own=admin");
    expect(() => requireMayChange(policy, "u1", Role.MEMBER, "u1", "revoking")).toThrow(/revoke_own/);
  });

  it("says up front whose keys an actor may revoke, agreeing with the verdict on each key", () => {
    const roles = [Role.VIEWER, Role.MEMBER, Role.ADMIN, Role.OWNER];
    const kinds = new Set<string>();
    for (const revokeAny of roles) {
      for (const revokeOwn of roles) {
        const policy = parsePolicy(`revoke_any=${Role[revokeAny]},revoke_own=${Role[revokeOwn]}`);
        for (const role of roles) {
          const allowed = revocable(policy, "u_actor", role);
          kinds.add(allowed.kind);
          for (const createdBy of ["u_actor", "u_other"]) {
            let verdict = true;
            try {
              requireMayChange(policy, "u_actor", role, createdBy, "revoking a key");
            } catch {
              verdict = false;
            }
            expect(mayRevokeCreatedBy(allowed, createdBy), `${formatPolicy(policy)} ${Role[role]} ${createdBy}`).toBe(verdict);
          }
        }
      }
    }
    expect([...kinds].sort()).toEqual(["any", "none", "own"]);
  });
});
