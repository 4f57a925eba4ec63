// Records → protobuf messages. The only place that knows both shapes.
import { create } from "@bufbuild/protobuf";
import { type Timestamp, timestampFromMs } from "@bufbuild/protobuf/wkt";
import {
  type ApiKey,
  ApiKeySchema,
  type AuditEvent,
  AuditEventSchema,
  type Limits,
  LimitsSchema,
  type Member,
  MemberSchema,
  type Organization,
  OrganizationSchema,
  type Principal,
  PrincipalSchema,
  Role,
} from "../../gen/apikeys/v1/apikeys_pb.js";
import type { AuditRecord, KeyRecord, LimitsRecord, MemberRecord, OrganizationRecord, VerifyRecord } from "./records.js";
import { keyState } from "./verification.js";

function ts(ms: number | null): Timestamp | undefined {
  return ms === null ? undefined : timestampFromMs(ms);
}

export function toLimits(limits: LimitsRecord | null): Limits | undefined {
  if (limits === null) return undefined;
  return create(LimitsSchema, {
    requestsPerMinute: limits.requestsPerMinute,
    requestsPerDay: limits.requestsPerDay,
    monthlyCredits: BigInt(limits.monthlyCredits),
  });
}

export function toApiKey(key: KeyRecord, now: number): ApiKey {
  return create(ApiKeySchema, {
    id: key.id,
    organizationId: key.organizationId,
    projectId: key.projectId,
    name: key.name,
    prefix: key.prefix,
    preview: key.preview,
    scopes: key.scopes,
    createdBy: key.createdBy,
    state: keyState(key.revokeTime, key.expireTime, now),
    createTime: ts(key.createTime),
    updateTime: ts(key.updateTime),
    expireTime: ts(key.expireTime),
    lastUsedTime: ts(key.lastUsedTime),
    revokeTime: ts(key.revokeTime),
    revokedBy: key.revokedBy,
    revokeReason: key.revokeReason,
    rotateTime: ts(key.rotateTime),
    previousSecretExpireTime:
      key.previousSecretExpireTime !== null && key.previousSecretExpireTime > now
        ? ts(key.previousSecretExpireTime)
        : undefined,
    metadata: key.metadata,
    limits: toLimits(key.limits),
  });
}

export function toPrincipal(rec: VerifyRecord): Principal {
  return create(PrincipalSchema, {
    organizationId: rec.key.organizationId,
    projectId: rec.key.projectId,
    userId: rec.key.createdBy,
    role: rec.memberRole ?? Role.UNSPECIFIED,
    scopes: rec.key.scopes,
  });
}

export function toMember(m: MemberRecord): Member {
  return create(MemberSchema, {
    organizationId: m.organizationId,
    userId: m.userId,
    role: m.role,
    updateTime: ts(m.updateTime),
  });
}

export function toOrganization(o: OrganizationRecord): Organization {
  return create(OrganizationSchema, {
    id: o.id,
    apiAccessEnabled: o.apiAccessEnabled,
    updateTime: ts(o.updateTime),
  });
}

export function toAuditEvent(a: AuditRecord): AuditEvent {
  return create(AuditEventSchema, {
    id: a.id,
    organizationId: a.organizationId,
    time: ts(a.time),
    actorUserId: a.actorUserId,
    actorRole: a.actorRole,
    caller: a.caller,
    action: a.action,
    keyId: a.keyId,
    details: a.details,
  });
}
