// The ports of the domain: what the key services and the Verifier need from
// the outside, side by side. Each has a real implementation and one for dev
// mode and tests:
//   Store          src/store/mysql-store.ts, src/store/memory-store.ts
//                  (both pass test/contract/store-contract.ts)
//   UsageLimiter   src/limits/redis-usage-limiter.ts, src/limits/memory-usage-limiter.ts
//   CreditLedger   src/limits/credit-ledger.ts (MySQL and memory)
//   Invalidator    src/broadcast/redis-broadcast.ts, src/broadcast/local-invalidator.ts
// Changes travel as command objects: one named field per fact, the same shape
// at the caller and in every implementation.
import type { RateLimitState, Role } from "../../gen/apikeys/v1/apikeys_pb.js";
import type { Revocable } from "./policy.js";
import type { AuditRecord, KeyRecord, LimitsRecord, MemberRecord, OrganizationRecord, VerifyRecord } from "./records.js";

// ─── Store ──────────────────────────────────────────────────────────────────
// Every query takes the organization first: a key id of another organization
// is simply not found. Every change records its audit event atomically with it.

export interface NewKey {
  key: KeyRecord;
  /** HMAC of the secret. */
  hash: Buffer;
  /**
   * The role the creator is added with if not a member of the organization
   * yet; null: a creator who is not a member stays none. A member's stored
   * role is never changed by a create: membership changes only through
   * OrganizationService (see KeyService.createKey).
   */
  enrollRole: Role | null;
  /** Idempotency scope, e.g. "<caller>/<request_id>"; empty for none. */
  requestId: string;
  audit: AuditRecord;
  /**
   * The secret's membership mark (hashMark) to announce as "created", or null
   * (no membership filter; also when absent). The store writes it to the outbox in the create's
   * own transaction: one row per batch, under its first create's audit id.
   */
  mark?: string | null;
}

/** A committed "created" outbox row, shared by every key of the batch that wrote it. */
export interface Announcement {
  outbox: OutboxRef;
  invalidation: Invalidation;
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

export interface AuditQuery {
  organizationId: string;
  /** Return events strictly older than this position (from a previous page), or null for the first page. */
  after: string | null;
  limit: number;
}

export interface Page<T> {
  items: T[];
  /** Position of the last item, to pass as `after`; null when there is nothing more. */
  next: string | null;
}

/** What every change carries: the organization it happens in, when, and the audit event written with it. */
export interface Change {
  organizationId: string;
  now: number;
  audit: AuditRecord;
  /**
   * The invalidation the change owes every instance's cache, written to the
   * outbox in the change's own transaction under the audit event's id, so
   * that it is announced even if the caller's broadcast fails (see
   * docs/revocation.md). Absent: the change affects no verification.
   */
  invalidation?: Invalidation;
}

/** An outbox row: a committed change's invalidation, until it is known to be announced. */
export interface OutboxEntry {
  organizationId: string;
  /** The change's audit event id. */
  id: string;
  invalidation: Invalidation;
  /** When the change was made (epoch ms). */
  createTime: number;
}

export type OutboxRef = Pick<OutboxEntry, "organizationId" | "id">;

/** The outbox id of a create's "member" row (its creator was added), beside its "created" row under the audit id. */
export function memberOutboxId(auditId: string): string {
  return `${auditId}:member`;
}

export interface KeyPatch {
  name?: string;
  scopes?: string[];
  expireTime?: number | null;
  metadata?: Record<string, string>;
  limits?: LimitsRecord | null;
}

export interface UpdateKeyCommand extends Change {
  keyId: string;
  patch: KeyPatch;
}

export interface Rotation {
  newHash: Buffer;
  newPreview: string;
  /** Until when the current secret keeps working; `now` (or earlier) ends it at once. */
  oldSecretExpireTime: number;
}

export interface RotateKeyCommand extends Change {
  keyId: string;
  rotation: Rotation;
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

export interface RevokeKeyCommand extends Change {
  keyId: string;
  revokedBy: string;
  reason: string;
  permission: RevokePermission;
}

export interface RevokeKeysCommand extends Change {
  createdBy: string;
  revokedBy: string;
  reason: string;
}

export interface SetMemberRoleCommand extends Change {
  userId: string;
  role: Role;
}

export interface RemoveMemberCommand extends Change {
  userId: string;
  /** Also revoke every key the member created. */
  revokeKeys: boolean;
}

export interface SetApiAccessCommand extends Change {
  enabled: boolean;
}

export interface CreatedKey {
  key: KeyRecord;
  /** False when an earlier create with the same requestId is returned instead. */
  created: boolean;
  /**
   * Whether the creator was added as a member (with enrollRole), so that
   * caches holding the creator's keys (as a non-member's) must be told.
   * Always false when created is false.
   */
  memberChanged: boolean;
  /** The outbox row announcing the new secret (NewKey.mark); the same object for every key of one batch. */
  announcement?: Announcement;
  /**
   * The outbox row announcing that the creator was added ("member"), written in the create's transaction
   * for a creator's first create with enrollRole (almost always with memberChanged; one too many is harmless).
   */
  memberAnnouncement?: Announcement;
}

/** Keys whose state changed, so caches can be told. */
export interface ChangedKeys {
  keyIds: string[];
}

export interface Store {
  /** Creates the schema or brings it up to date. Safe to run from several instances at once. */
  migrate(): Promise<void>;
  /** Cheap liveness check of the backing database. */
  ping(): Promise<void>;
  close(): Promise<void>;

  /**
   * Inserts the key, its secret hash, the creator's membership (only if absent,
   * with enrollRole), the organization (created enabled if new) and the audit event.
   * With a requestId already used in the organization, inserts nothing and
   * returns the key created first with created=false.
   */
  createKey(input: NewKey): Promise<CreatedKey>;
  getKey(organizationId: string, keyId: string): Promise<KeyRecord | null>;
  /** Newest first; stable under concurrent inserts. */
  listKeys(query: ListKeysQuery): Promise<Page<KeyRecord>>;
  /** The one lookup behind VerifyKey: the key (revoked or not) holding this secret hash. */
  /**
   * The one lookup behind VerifyKey: the key (revoked or not) holding this secret hash.
   * `freshness` (the verify cache's generation, which every invalidation bumps) lets a
   * store read a replica: an answer for a larger freshness must reflect every change
   * committed before that invalidation arrived. Without it, the store reads its primary.
   */
  findByHash(hash: Buffer, freshness?: number): Promise<VerifyRecord | null>;
  /** How many secret hashes are stored (sizes the membership filter, src/keys/membership.ts). */
  countSecretHashes(): Promise<number>;
  /** Up to `limit` stored secret hashes greater than `after` (null: from the first), in byte order. */
  scanSecretHashes(after: Buffer | null, limit: number): Promise<Buffer[]>;
  /**
   * Replaces a secret's stored hash (pepper rotation: the hash under the
   * previous pepper becomes the hash under the current one), keeping its key
   * (the organization's key keyId) and expiry. False when no secret has oldHash
   * (e.g. another instance did it).
   */
  replaceSecretHash(organizationId: string, keyId: string, oldHash: Buffer, newHash: Buffer): Promise<boolean>;

  /** Changes the named fields. Null when the key does not exist in the organization or is revoked. */
  updateKey(command: UpdateKeyCommand): Promise<KeyRecord | null>;
  /** Adds a new secret; the current one(s) expire at oldSecretExpireTime. Null when not found or revoked. */
  rotateKey(command: RotateKeyCommand): Promise<KeyRecord | null>;
  /**
   * Revokes the key if `permission` allows it, unless already revoked (then
   * returns it unchanged with changed=false, and records no audit event).
   * Null when not found.
   */
  revokeKey(command: RevokeKeyCommand): Promise<{ key: KeyRecord; changed: boolean } | null>;
  /** Revokes every unrevoked key createdBy made in the organization; returns their ids. */
  revokeKeysCreatedBy(command: RevokeKeysCommand): Promise<ChangedKeys>;

  /** A user's membership of an organization; null when not a member. */
  getMember(organizationId: string, userId: string): Promise<MemberRecord | null>;
  setMemberRole(command: SetMemberRoleCommand): Promise<MemberRecord>;
  /** Removes the membership (idempotent); with revokeKeys also revokes the member's keys. */
  removeMember(command: RemoveMemberCommand): Promise<ChangedKeys>;
  setApiAccess(command: SetApiAccessCommand): Promise<OrganizationRecord>;
  /** Newest first. */
  listAuditEvents(query: AuditQuery): Promise<Page<AuditRecord>>;

  /** Connection pool usage, for metrics; absent for a store without a pool (the in-memory one). */
  poolStats?(): PoolStats;

  /** Records last-used times (organization → key → time) in one batch (a key's time only ever moves forward). */
  touchLastUsed(entries: ReadonlyMap<string, ReadonlyMap<string, number>>): Promise<void>;

  /** The durable side of monthly credits, kept beside the keys (its close() leaves the store open). */
  creditLedger(): CreditLedger;

  /** Outbox rows of changes made before `createdBefore` (epoch ms), oldest first, at most `limit`. */
  pendingInvalidations(createdBefore: number, limit: number): Promise<OutboxEntry[]>;
  /** Deletes outbox rows (announced); one transaction per organization. Unknown ones are ignored. */
  deleteInvalidations(refs: readonly OutboxRef[]): Promise<void>;
}

/** A database connection pool's usage (apikeys_db_pool_* metrics). */
export interface PoolStats {
  /** Connections running a query or held by a transaction. */
  inUse: number;
  idle: number;
  /** Calls waiting for a free connection. */
  waiting: number;
  max: number;
  /** Transactions rolled back as a deadlock's victim, since start. */
  deadlocks: number;
}

// ─── UsageLimiter ───────────────────────────────────────────────────────────
// Rate limits and monthly credits, for VerifyKey.

/** What the limiter needs of a key (prebuilt per cached key, so a verification allocates none). */
export interface LimitedKey {
  readonly id: string;
  /** Where the ledger keeps the key's credits (the sharding key). */
  readonly organizationId: string;
  readonly limits: LimitsRecord;
}

export type UsageVerdict = "ok" | "rate_limited" | "usage_exceeded";

export interface UsageOutcome {
  verdict: UsageVerdict;
  /** Credits left this month, when the key has a monthly credit limit. */
  remainingCredits?: bigint;
  /** The tightest rate limit's state, when the key has rate limits. */
  rateLimit?: RateLimitState;
}

export interface UsageLimiter {
  /**
   * Counts one request against the key's rate limits and consumes `cost`
   * credits, atomically and across every instance: all or nothing. Called only
   * for keys that are otherwise valid and have limits.
   */
  consume(key: LimitedKey, cost: number, now: number): Promise<UsageOutcome>;
}

/** A limiter as the app runs it: started and stopped with the app. */
export interface ManagedUsageLimiter extends UsageLimiter {
  start(): Promise<void>;
  /** Persists the credits consumed so far (where the limiter keeps them durably). */
  flush(): Promise<void>;
  /** Flushes and releases connections. */
  stop(): Promise<void>;
}

// ─── CreditLedger ───────────────────────────────────────────────────────────
// The durable side of monthly credits: what each key had used per month as of
// the last flush, so that a limiter whose counters were lost is re-seeded from
// here instead of handing out a fresh month.

export interface CreditUsage {
  organizationId: string;
  keyId: string;
  /** Calendar month (UTC), "YYYYMM". */
  month: string;
  used: number;
}

export interface CreditLedger {
  /** Credits the key (of the organization) had used in the month as last saved; 0 when never saved. */
  load(organizationId: string, keyId: string, month: string): Promise<number>;
  /** Saves the entries; a saved value never lowers what is stored. */
  save(entries: readonly CreditUsage[]): Promise<void>;
  close(): Promise<void>;
}

// ─── Invalidator ────────────────────────────────────────────────────────────
// What changed in a way that affects verification. The services announce each
// change before the RPC that made it returns; the broadcast implementation
// makes every instance drop what it cached.

export type Invalidation =
  | { kind: "keys"; keyIds: string[] }
  /** New secrets (CreateKey, RotateKey): the first 8 bytes of each hash, hex, for every instance's membership filter. */
  | { kind: "created"; marks: string[] }
  | { kind: "member"; organizationId: string; userId: string }
  | { kind: "org"; organizationId: string };

export interface Invalidator {
  /**
   * Resolves once no instance will answer from stale state any more. `outbox`
   * names the change's outbox row (Change.invalidation), deleted once that is so.
   */
  invalidate(event: Invalidation, outbox?: OutboxRef): Promise<void>;
}
