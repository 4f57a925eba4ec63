// Who is calling the service, and where it may act. Built once per configured
// caller (src/transport/auth.ts) and handed to every call it makes.
import { ApiError, Status } from "./errors.js";

export interface CallContext {
  /** The caller's configured name, e.g. "web" ("anonymous" when unauthenticated callers are allowed). */
  caller: string;
  /** The organizations the caller may act in, or null for every one (CALLERS "organizations" absent). */
  organizations: OrganizationScope | null;
}

/**
 * A caller's organizations: exact ids, and prefixes (configured as `team_*`).
 * A caller serving one product or one tenant cannot reach another's keys,
 * members or audit trail, whatever organization_id it sends.
 */
export class OrganizationScope {
  private readonly exact: ReadonlySet<string>;
  private readonly prefixes: readonly string[];

  constructor(patterns: readonly string[]) {
    this.exact = new Set(patterns.filter((p) => !p.endsWith("*")));
    this.prefixes = patterns.filter((p) => p.endsWith("*")).map((p) => p.slice(0, -1));
  }

  allows(organizationId: string): boolean {
    if (organizationId === "") return false;
    if (this.exact.has(organizationId)) return true;
    const prefixes = this.prefixes;
    for (let i = 0; i < prefixes.length; i++) if (organizationId.startsWith(prefixes[i])) return true;
    return false;
  }
}

/**
 * PERMISSION_DENIED when the caller may not act in the organization. The
 * refusal names the caller, not the organization's contents: it says nothing
 * about whether the organization or any key in it exists.
 */
export function requireOrganization(call: CallContext, organizationId: string): void {
  if (call.organizations === null || call.organizations.allows(organizationId)) return;
  throw new ApiError(
    Status.PERMISSION_DENIED,
    "ORGANIZATION_NOT_ALLOWED",
    `caller "${call.caller}" may not act in this organization (CALLERS "organizations")`,
    { caller: call.caller },
  );
}
