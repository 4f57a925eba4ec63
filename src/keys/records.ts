// The domain's records: what the stores keep and the service reasons about.
// Times are epoch milliseconds (UTC); null means "not set".
import type { Role } from "../../gen/apikeys/v1/apikeys_pb.js";

export interface LimitsRecord {
  requestsPerMinute: number;
  requestsPerDay: number;
  monthlyCredits: number;
}

/** Limits that are all 0 (unlimited) are no limits: null, so such keys skip the limiter. */
export function normalizeLimits(limits: LimitsRecord | null): LimitsRecord | null {
  if (limits === null) return null;
  if (limits.requestsPerMinute === 0 && limits.requestsPerDay === 0 && limits.monthlyCredits === 0) return null;
  return { ...limits };
}

export interface KeyRecord {
  id: string;
  organizationId: string;
  projectId: string;
  name: string;
  prefix: string;
  preview: string;
  scopes: string[];
  createdBy: string;
  createTime: number;
  updateTime: number;
  expireTime: number | null;
  lastUsedTime: number | null;
  revokeTime: number | null;
  revokedBy: string;
  revokeReason: string;
  rotateTime: number | null;
  previousSecretExpireTime: number | null;
  metadata: Record<string, string>;
  limits: LimitsRecord | null;
}

/** What VerifyKey needs, found by one lookup of a secret's hash. */
export interface VerifyRecord {
  key: KeyRecord;
  /** When this particular secret stops working (a rotated-out secret's grace deadline), or null. */
  secretExpireTime: number | null;
  /** The creator's current role in the organization; null when not (or no longer) a member. */
  memberRole: Role | null;
  /** Whether the organization's API access is on. */
  orgEnabled: boolean;
}

export interface MemberRecord {
  organizationId: string;
  userId: string;
  role: Role;
  updateTime: number;
}

export interface OrganizationRecord {
  id: string;
  apiAccessEnabled: boolean;
  updateTime: number;
}

/** One management action, written in the same transaction as the change. */
export interface AuditRecord {
  id: string;
  organizationId: string;
  time: number;
  actorUserId: string;
  actorRole: Role;
  caller: string;
  action: string;
  keyId: string;
  details: Record<string, string>;
}
