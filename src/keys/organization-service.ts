// What a product's backend tells the service about its organizations: members'
// current roles and whether API access is on. Each change is announced to
// every instance before the call returns, like a revocation.
import { create } from "@bufbuild/protobuf";
import {
  type Actor,
  type ListAuditEventsRequest,
  type ListAuditEventsResponse,
  ListAuditEventsResponseSchema,
  type RemoveMemberRequest,
  type RemoveMemberResponse,
  RemoveMemberResponseSchema,
  type SetApiAccessRequest,
  type SetApiAccessResponse,
  SetApiAccessResponseSchema,
  type SetMemberRoleRequest,
  type SetMemberRoleResponse,
  SetMemberRoleResponseSchema,
} from "../../gen/apikeys/v1/apikeys_pb.js";
import type { Store } from "./ports.js";
import { auditEvent } from "./audit.js";
import type { CallContext } from "./call-context.js";
import type { Invalidation, Invalidator } from "./ports.js";
import { toAuditEvent, toMember, toOrganization } from "./mapping.js";
import { decodePageToken, encodePageToken } from "./page-token.js";
import { type KeyPolicy, requireRole, roleName } from "./policy.js";
import { checkPageSize, requireActor, requireId, requireRoleValue } from "./validation.js";

export interface OrganizationServiceOptions {
  store: Store;
  policy: KeyPolicy;
  invalidator: Invalidator;
  now?: () => number;
}

export class OrganizationService {
  private readonly store: Store;
  private readonly policy: KeyPolicy;
  private readonly invalidator: Invalidator;
  private readonly now: () => number;

  constructor(options: OrganizationServiceOptions) {
    this.store = options.store;
    this.policy = options.policy;
    this.invalidator = options.invalidator;
    this.now = options.now ?? Date.now;
  }

  async setMemberRole(req: SetMemberRoleRequest, call: CallContext): Promise<SetMemberRoleResponse> {
    const now = this.now();
    const orgId = requireId("organization_id", req.organizationId);
    const userId = requireId("user_id", req.userId);
    const role = requireRoleValue("role", req.role);
    const actor = optionalActor(req.actor);
    const audit = auditEvent(call, actor, orgId, "member.set_role", now, "", { user_id: userId, role: roleName(role) });
    const invalidation: Invalidation = { kind: "member", organizationId: orgId, userId };
    const member = await this.store.setMemberRole({ organizationId: orgId, userId, role, now, audit, invalidation });
    await this.invalidator.invalidate(invalidation, { organizationId: orgId, id: audit.id });
    return create(SetMemberRoleResponseSchema, { member: toMember(member) });
  }

  async removeMember(req: RemoveMemberRequest, call: CallContext): Promise<RemoveMemberResponse> {
    const now = this.now();
    const orgId = requireId("organization_id", req.organizationId);
    const userId = requireId("user_id", req.userId);
    const actor = optionalActor(req.actor);
    const audit = auditEvent(call, actor, orgId, "member.remove", now, "", { user_id: userId, revoke_keys: String(req.revokeKeys) });
    const invalidation: Invalidation = { kind: "member", organizationId: orgId, userId };
    const changed = await this.store.removeMember({ organizationId: orgId, userId, revokeKeys: req.revokeKeys, now, audit, invalidation });
    await this.invalidator.invalidate(invalidation, { organizationId: orgId, id: audit.id });
    return create(RemoveMemberResponseSchema, { revokedCount: changed.keyIds.length });
  }

  async setApiAccess(req: SetApiAccessRequest, call: CallContext): Promise<SetApiAccessResponse> {
    const now = this.now();
    const orgId = requireId("organization_id", req.organizationId);
    const actor = optionalActor(req.actor);
    const audit = auditEvent(call, actor, orgId, req.enabled ? "org.enable_api" : "org.disable_api", now);
    const invalidation: Invalidation = { kind: "org", organizationId: orgId };
    const org = await this.store.setApiAccess({ organizationId: orgId, enabled: req.enabled, now, audit, invalidation });
    await this.invalidator.invalidate(invalidation, { organizationId: orgId, id: audit.id });
    return create(SetApiAccessResponseSchema, { organization: toOrganization(org) });
  }

  async listAuditEvents(req: ListAuditEventsRequest, _call: CallContext): Promise<ListAuditEventsResponse> {
    const orgId = requireId("organization_id", req.organizationId);
    const actor = requireActor(req.actor);
    requireRole(this.policy, "view_all", actor.role, "listing the audit trail");
    const pageSize = checkPageSize(req.pageSize);
    const filters = ["audit", orgId];
    const after = decodePageToken(req.pageToken, filters);
    const page = await this.store.listAuditEvents({ organizationId: orgId, after, limit: pageSize });
    return create(ListAuditEventsResponseSchema, {
      events: page.items.map(toAuditEvent),
      nextPageToken: encodePageToken(page.next, filters),
    });
  }
}

/** Organization changes come from the product's backend; the actor, when given, is recorded. */
function optionalActor(actor: Actor | undefined): Actor | undefined {
  return actor && (actor.userId !== "" || actor.role !== 0) ? requireActor(actor) : undefined;
}
