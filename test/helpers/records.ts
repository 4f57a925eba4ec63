// Record builders for tests: a complete, active, unlimited key (or audit
// event) with the given fields overriding the defaults.
import { randomBytes } from "node:crypto";
import { Role } from "../../gen/apikeys/v1/apikeys_pb.js";
import type { AuditRecord, KeyRecord } from "../../src/keys/records.js";
import type { NewKey } from "../../src/keys/ports.js";

/** Has milliseconds, so a store that drops them fails. */
export const T0 = Date.UTC(2030, 0, 15, 12, 0, 0, 123);

export function uid(prefix: string): string {
  return `${prefix}_${randomBytes(8).toString("hex")}`;
}

export function keyRecord(fields: Partial<KeyRecord> = {}): KeyRecord {
  return {
    id: uid("key"),
    organizationId: "org_1",
    projectId: "",
    name: "test key",
    prefix: "sk",
    preview: "sk_3Fz9…q2Lk",
    scopes: [],
    createdBy: "u_creator",
    createTime: T0,
    updateTime: T0,
    expireTime: null,
    lastUsedTime: null,
    revokeTime: null,
    revokedBy: "",
    revokeReason: "",
    rotateTime: null,
    previousSecretExpireTime: null,
    metadata: {},
    limits: null,
    ...fields,
  };
}

export function auditRecord(organizationId: string, action: string, fields: Partial<AuditRecord> = {}): AuditRecord {
  return {
    id: uid("evt"),
    organizationId,
    time: T0,
    actorUserId: "u_admin",
    actorRole: Role.ADMIN,
    caller: "test",
    action,
    keyId: "",
    details: {},
    ...fields,
  };
}

export interface NewKeyOptions {
  key?: Partial<KeyRecord>;
  requestId?: string;
  /** The role a creator who is not a member yet is added with (default member); null: not added. */
  enrollRole?: Role | null;
}

/** What CreateKey hands the store: a key of the organization, a random secret hash, the role to add its creator with, its audit event. */
export function newKey(organizationId: string, options: NewKeyOptions = {}): NewKey {
  const key = keyRecord({ organizationId, ...options.key });
  return {
    key,
    hash: randomBytes(32),
    enrollRole: options.enrollRole === undefined ? Role.MEMBER : options.enrollRole,
    requestId: options.requestId ?? "",
    audit: auditRecord(organizationId, "key.create", { keyId: key.id, time: key.createTime }),
  };
}
