// The management policy: which role may create, see, change and revoke keys,
// and whether creating a key makes its creator a member. One deployment serves
// one product, so the policy is configuration (KEY_POLICY).
import { Role } from "../../gen/apikeys/v1/apikeys_pb.js";
import { ApiError, Status } from "./errors.js";

/** Rules naming the least role that may do something. */
export type PolicyRule = "create" | "view_all" | "revoke_any" | "revoke_own" | "update_limits";
export type KeyPolicy = Record<PolicyRule, Role> & {
  /**
   * What CreateKey does for a creator who is not a member of the organization:
   * adds them with the role the caller states for its actor, but at most this
   * one; null ("enroll=none"): refuses, so that membership comes only from
   * OrganizationService. Never applies to a removed member (see KeyService.createKey).
   */
  enroll: Role | null;
};

const RULES: PolicyRule[] = ["create", "view_all", "revoke_any", "revoke_own", "update_limits"];
const ROLE_NAMES: Record<string, Role> = {
  viewer: Role.VIEWER,
  member: Role.MEMBER,
  admin: Role.ADMIN,
  owner: Role.OWNER,
};

/** A product's own names for the roles (ROLE_ALIASES, e.g. "builder=member"), by lower-case name. */
export type RoleAliases = Readonly<Record<string, Role>>;

/** Parses "builder=member,…": each alias names one of viewer, member, admin, owner. */
export function parseRoleAliases(text: string): RoleAliases {
  const aliases: Record<string, Role> = {};
  for (const part of text.split(",").map((p) => p.trim()).filter(Boolean)) {
    const pair = part.split("=").map((s) => s.trim().toLowerCase());
    if (pair.length !== 2 || !/^[a-z][a-z0-9_-]*$/.test(pair[0])) throw new Error(`ROLE_ALIASES: "${part}" is not alias=role (e.g. builder=member)`);
    const [alias, role] = pair;
    if (Object.hasOwn(ROLE_NAMES, alias)) throw new Error(`ROLE_ALIASES: "${alias}" is already a role`);
    if (!Object.hasOwn(ROLE_NAMES, role)) throw new Error(`ROLE_ALIASES: unknown role "${role}" for ${alias} (expected viewer, member, admin or owner)`);
    aliases[alias] = ROLE_NAMES[role];
  }
  return aliases;
}

export const DEFAULT_POLICY = "create=member,view_all=admin,revoke_any=admin,revoke_own=member,update_limits=admin,enroll=owner";

/** Parses "create=member,view_all=admin,…"; rules not named keep their defaults. Roles may be named by their aliases. */
export function parsePolicy(text: string, aliases: RoleAliases = {}): KeyPolicy {
  const policy: KeyPolicy = {
    create: Role.MEMBER,
    view_all: Role.ADMIN,
    revoke_any: Role.ADMIN,
    revoke_own: Role.MEMBER,
    // Limits and metadata (where plans and tiers live) are the product's to set, not every key owner's.
    update_limits: Role.ADMIN,
    enroll: Role.OWNER,
  };
  for (const part of text.split(",").map((p) => p.trim()).filter(Boolean)) {
    const pair = part.split("=").map((s) => s.trim().toLowerCase());
    if (pair.length !== 2) throw new Error(`KEY_POLICY: "${part}" is not rule=role (e.g. create=member)`);
    const [rule, role] = pair;
    if (rule === "enroll" && role === "none") {
      policy.enroll = null;
      continue;
    }
    if (rule !== "enroll" && !RULES.includes(rule as PolicyRule)) {
      throw new Error(`KEY_POLICY: unknown rule "${rule}" (expected one of ${[...RULES, "enroll"].join(", ")})`);
    }
    // Own properties only: "toString" or "constructor" are not roles.
    const names = Object.hasOwn(ROLE_NAMES, role) ? ROLE_NAMES : Object.hasOwn(aliases, role) ? aliases : null;
    if (names === null) {
      throw new Error(`KEY_POLICY: unknown role "${role}" for ${rule} (expected viewer, member, admin or owner${aliasList(aliases)})`);
    }
    policy[rule as PolicyRule | "enroll"] = names[role];
  }
  return policy;
}

function aliasList(aliases: RoleAliases): string {
  const names = Object.keys(aliases);
  return names.length === 0 ? "" : `, or an alias: ${names.join(", ")}`;
}

export function roleName(role: Role): string {
  return Role[role]?.toLowerCase() ?? String(role);
}

export function formatPolicy(policy: KeyPolicy): string {
  return [...RULES.map((r) => `${r}=${roleName(policy[r])}`), `enroll=${policy.enroll === null ? "none" : roleName(policy.enroll)}`].join(",");
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
