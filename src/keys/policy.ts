// The management policy: which role may create, see and revoke keys. One
// deployment serves one product, so the policy is configuration (KEY_POLICY).
import { Role } from "../../gen/apikeys/v1/apikeys_pb.js";
import { ApiError, Status } from "./errors.js";

export type PolicyRule = "create" | "view_all" | "revoke_any" | "revoke_own";
export type KeyPolicy = Record<PolicyRule, Role>;

const RULES: PolicyRule[] = ["create", "view_all", "revoke_any", "revoke_own"];
const ROLE_NAMES: Record<string, Role> = {
  viewer: Role.VIEWER,
  member: Role.MEMBER,
  builder: Role.MEMBER, // Keystroke's name for a member
  admin: Role.ADMIN,
  owner: Role.OWNER,
};

export const DEFAULT_POLICY = "create=member,view_all=admin,revoke_any=admin,revoke_own=member";

/** Parses "create=member,view_all=admin,…"; rules not named keep their defaults. */
export function parsePolicy(text: string): KeyPolicy {
  const policy: KeyPolicy = {
    create: Role.MEMBER,
    view_all: Role.ADMIN,
    revoke_any: Role.ADMIN,
    revoke_own: Role.MEMBER,
  };
  for (const part of text.split(",").map((p) => p.trim()).filter(Boolean)) {
    const pair = part.split("=").map((s) => s.trim().toLowerCase());
    if (pair.length !== 2) throw new Error(`KEY_POLICY: "${part}" is not rule=role (e.g. create=member)`);
    const [rule, role] = pair;
    if (!RULES.includes(rule as PolicyRule)) {
      throw new Error(`KEY_POLICY: unknown rule "${rule}" (expected one of ${RULES.join(", ")})`);
    }
    // Own properties only: "toString" or "constructor" are not roles.
    if (!Object.hasOwn(ROLE_NAMES, role)) {
      throw new Error(`KEY_POLICY: unknown role "${role}" for ${rule} (expected viewer, member, admin or owner)`);
    }
    policy[rule as PolicyRule] = ROLE_NAMES[role];
  }
  return policy;
}

export function roleName(role: Role): string {
  return Role[role]?.toLowerCase() ?? String(role);
}

export function formatPolicy(policy: KeyPolicy): string {
  return RULES.map((r) => `${r}=${roleName(policy[r])}`).join(",");
}

/** Throws PERMISSION_DENIED naming the rule when `role` is below what `rule` needs. */
export function requireRole(policy: KeyPolicy, rule: PolicyRule, role: Role, action: string): void {
  if (role < policy[rule]) {
    throw new ApiError(
      Status.PERMISSION_DENIED,
      "ROLE_TOO_LOW",
      `${action} needs role ${roleName(policy[rule])} or higher (policy rule ${rule}); the actor is ${roleName(role)}`,
      { rule, required_role: roleName(policy[rule]), actor_role: roleName(role) },
    );
  }
}

export function mayViewAll(policy: KeyPolicy, role: Role): boolean {
  return role >= policy.view_all;
}

/**
 * Whose keys an actor may revoke, known before any key is read: every key, only
 * the keys it created, or none. The rule itself; requireMayChange applies it to
 * one key and says why not.
 */
export type Revocable = { kind: "any" } | { kind: "own"; userId: string } | { kind: "none" };

export function revocable(policy: KeyPolicy, actorId: string, role: Role): Revocable {
  if (role >= policy.revoke_any) return { kind: "any" };
  if (role >= policy.revoke_own) return { kind: "own", userId: actorId };
  return { kind: "none" };
}

export function mayRevokeCreatedBy(allowed: Revocable, createdBy: string): boolean {
  return allowed.kind === "any" || (allowed.kind === "own" && allowed.userId === createdBy);
}

/** May an actor with `role` and `userId` revoke (or change) a key created by `createdBy`? */
export function requireMayChange(policy: KeyPolicy, actorId: string, role: Role, createdBy: string, action: string): void {
  if (mayRevokeCreatedBy(revocable(policy, actorId, role), createdBy)) return;
  // Refused: by the rule the actor falls short of for this key.
  if (actorId === createdBy) return requireRole(policy, "revoke_own", role, action);
  requireRole(policy, "revoke_any", role, `${action} of another user's key`);
}
