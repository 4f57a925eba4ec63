// The storage port. The domain talks to this interface only; MySQL
// (mysql-store.ts) and memory (memory-store.ts) implement it, and both pass
// the same contract suite (test/contract/store-contract.ts).
//
// Every query takes the organization first: a key id of another organization
// is simply not found. Every mutation records its audit event atomically with
// the change.
import type { Role } from "../../gen/apikeys/v1/apikeys_pb.js";
import type {
  AuditRecord,
  KeyRecord,
  MemberRecord,
  OrganizationRecord,
  VerifyRecord,
} from "../keys/records.js";
import type { Revocable } from "../keys/policy.js";

export interface NewKey {
  key: KeyRecord;
  /** HMAC of the secret. */
  hash: Buffer;
  /** The creator's role as reported by the caller; recorded as the member's current role. */
  creatorRole: Role;
  /** Idempotency scope, e.g. "<caller>/<request_id>"; empty for none. */
  requestId: string;
  audit: AuditRecord;
}

export interface ListKeysQuery {
  organizationId: string;
  projectId: string; // "" = any
  createdBy: string; // "" = any
  showRevoked: boolean;
  /** Return keys strictly older than this position (from a previous page), or null for the first page. */
  after: string | null;
  limit: number;
}

export interface Page<T> {
  items: T[];
  /** Position of the last item, to pass as `after`; null when there is nothing more. */
  next: string | null;
}

export interface KeyPatch {
  name?: string;
  scopes?: string[];
  expireTime?: number | null;
  metadata?: Record<string, string>;
  limits?: import("../keys/records.js").LimitsRecord | null;
}

export interface Rotation {
  newHash: Buffer;
  newPreview: string;
  /** Until when the current secret keeps working; `now` (or earlier) ends it at once. */
  oldSecretExpireTime: number;
}

export interface CreatedKey {
  key: KeyRecord;
  /** False when an earlier create with the same requestId is returned instead. */
  created: boolean;
  /**
   * Whether recording creatorRole changed the membership (a new member, or a
   * different role), so that caches holding the creator's keys must be told.
   * Always false when created is false.
   */
  memberChanged: boolean;
}

/** Keys whose state changed, so caches can be told. */
export interface ChangedKeys {
  keyIds: string[];
}

/**
 * The policy's say on a revoke, in two forms that agree: whose keys the actor
 * may revoke, known before the key is read (so a store can make it a condition
 * of its write: one round trip), and the verdict on the stored key, whose
 * error says why not.
 */
export interface RevokePermission {
  revocable: Revocable;
  /** Throws the refusal; called with the stored key when this call did not revoke it. */
  check(key: KeyRecord): void;
}

/**
 * A revoke whose write matched nothing: the refusal if the actor may not
 * revoke this key, else the key as it is (revoked before).
 */
export function unchangedByRevoke(key: KeyRecord, permission: RevokePermission): { key: KeyRecord; changed: false } {
  permission.check(key);
  if (key.revokeTime === null) {
    throw new Error(`revoking key ${key.id} changed nothing, yet it is not revoked and the policy lets the actor revoke it`);
  }
  return { key, changed: false };
}

export interface Store {
  /** Creates the schema or brings it up to date. Safe to run from several instances at once. */
  migrate(): Promise<void>;
  /** Cheap liveness check of the backing database. */
  ping(): Promise<void>;
  close(): Promise<void>;

  /**
   * Inserts the key, its secret hash, the creator's membership (upserted to
   * creatorRole), the organization (created enabled if new) and the audit event.
   * With a requestId already used in the organization, inserts nothing and
   * returns the key created first with created=false.
   */
  createKey(input: NewKey): Promise<CreatedKey>;
  getKey(organizationId: string, keyId: string): Promise<KeyRecord | null>;
  /** Newest first; stable under concurrent inserts. */
  listKeys(query: ListKeysQuery): Promise<Page<KeyRecord>>;
  /** The one lookup behind VerifyKey: the key (revoked or not) holding this secret hash. */
  findByHash(hash: Buffer): Promise<VerifyRecord | null>;
  /**
   * Replaces a secret's stored hash (pepper rotation: the hash under the
   * previous pepper becomes the hash under the current one), keeping its key
   * and expiry. False when no secret has oldHash (e.g. another instance did it).
   */
  replaceSecretHash(oldHash: Buffer, newHash: Buffer): Promise<boolean>;

  /** Changes the named fields. Null when the key does not exist in the organization or is revoked. */
  updateKey(organizationId: string, keyId: string, patch: KeyPatch, now: number, audit: AuditRecord): Promise<KeyRecord | null>;
  /** Adds a new secret; the current one(s) expire at oldSecretExpireTime. Null when not found or revoked. */
  rotateKey(organizationId: string, keyId: string, rotation: Rotation, now: number, audit: AuditRecord): Promise<KeyRecord | null>;
  /**
   * Revokes the key if `permission` allows it, unless already revoked (then
   * returns it unchanged with changed=false, and records no audit event).
   * Null when not found.
   */
  revokeKey(
    organizationId: string,
    keyId: string,
    revokedBy: string,
    reason: string,
    now: number,
    audit: AuditRecord,
    permission: RevokePermission,
  ): Promise<{ key: KeyRecord; changed: boolean } | null>;
  /** Revokes every unrevoked key createdBy made in the organization; returns their ids. */
  revokeKeysCreatedBy(
    organizationId: string,
    createdBy: string,
    revokedBy: string,
    reason: string,
    now: number,
    audit: AuditRecord,
  ): Promise<ChangedKeys>;

  setMemberRole(organizationId: string, userId: string, role: Role, now: number, audit: AuditRecord): Promise<MemberRecord>;
  /** Removes the membership (idempotent); with revokeKeys also revokes the member's keys. */
  removeMember(
    organizationId: string,
    userId: string,
    revokeKeys: boolean,
    now: number,
    audit: AuditRecord,
  ): Promise<ChangedKeys>;
  setApiAccess(organizationId: string, enabled: boolean, now: number, audit: AuditRecord): Promise<OrganizationRecord>;
  listAuditEvents(organizationId: string, after: string | null, limit: number): Promise<Page<AuditRecord>>;

  /** Records last-used times in one batch (a key's time only ever moves forward). */
  touchLastUsed(entries: ReadonlyMap<string, number>): Promise<void>;
}
