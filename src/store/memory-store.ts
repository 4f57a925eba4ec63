// The in-memory store, for dev mode and fast tests. It behaves exactly like
// the MySQL store (both pass test/contract/store-contract.ts). Each method runs
// without awaiting, so it is atomic like a transaction. Records are copied on
// the way in and out: callers never hold the store's own objects.
import type { Role } from "../../gen/apikeys/v1/apikeys_pb.js";
import {
  type AuditRecord,
  type KeyRecord,
  type MemberRecord,
  type OrganizationRecord,
  type VerifyRecord,
  normalizeLimits,
} from "../keys/records.js";
import { mayRevokeCreatedBy } from "../keys/policy.js";
import type {
  AuditQuery,
  CreditLedger,
  ChangedKeys,
  CreatedKey,
  Invalidation,
  ListKeysQuery,
  NewKey,
  OutboxEntry,
  OutboxRef,
  Page,
  RemoveMemberCommand,
  RevokeKeyCommand,
  RevokeKeysCommand,
  RotateKeyCommand,
  SetApiAccessCommand,
  SetMemberRoleCommand,
  Store,
  UpdateKeyCommand,
} from "../keys/ports.js";
import { memberOutboxId } from "../keys/ports.js";
import { unchangedByRevoke } from "./unchanged-by-revoke.js";
import { MemoryCreditLedger } from "../limits/credit-ledger.js";

/** The revoke reason of keys revoked because their creator left the organization. */
const MEMBER_REMOVED_REASON = "member removed";

interface StoredKey {
  seq: number;
  record: KeyRecord;
}

interface StoredSecret {
  keyId: string;
  expireTime: number | null;
}

export class MemoryStore implements Store {
  private readonly organizations = new Map<string, OrganizationRecord>();
  /** By pairKey(organization, user). */
  private readonly members = new Map<string, MemberRecord>();
  /** By id. */
  private readonly keys = new Map<string, StoredKey>();
  /** Oldest first; seq only grows, so this is also seq order. */
  private readonly keyLog: StoredKey[] = [];
  /** Key id by pairKey(organization, request id). */
  private readonly requests = new Map<string, string>();
  /** By hash, hex. */
  private readonly secrets = new Map<string, StoredSecret>();
  /** Oldest first. */
  private readonly audit: { seq: number; record: AuditRecord }[] = [];
  private nextSeq = 1;
  private readonly credits = new MemoryCreditLedger();
  /** The invalidation outbox: organization and audit id → entry. */
  private readonly outbox = new Map<string, OutboxEntry>();

  async migrate(): Promise<void> {}

  async ping(): Promise<void> {}

  async close(): Promise<void> {}

  async createKey(input: NewKey): Promise<CreatedKey> {
    const { key } = input;
    const requestKey = input.requestId === "" ? null : pairKey(key.organizationId, input.requestId);
    if (requestKey !== null) {
      const existing = this.requests.get(requestKey);
      if (existing !== undefined) return { key: copy(this.keys.get(existing)!.record), created: false, memberChanged: false };
    }
    const hash = input.hash.toString("hex");
    if (this.keys.has(key.id)) throw new Error(`duplicate key id ${key.id}`);
    if (this.secrets.has(hash)) throw new Error("duplicate secret hash");

    const stored: StoredKey = { seq: this.nextSeq++, record: { ...copy(key), limits: normalizeLimits(key.limits) } };
    this.keys.set(key.id, stored);
    this.keyLog.push(stored);
    if (requestKey !== null) this.requests.set(requestKey, key.id);
    this.secrets.set(hash, { keyId: key.id, expireTime: null });
    if (!this.organizations.has(key.organizationId)) {
      this.organizations.set(key.organizationId, { id: key.organizationId, apiAccessEnabled: true, updateTime: key.createTime });
    }
    const memberChanged = input.enrollRole !== null && !this.members.has(pairKey(key.organizationId, key.createdBy));
    if (memberChanged) this.upsertMember(key.organizationId, key.createdBy, input.enrollRole!, key.createTime);
    this.addAudit(input.audit);
    const result: CreatedKey = { key: copy(stored.record), created: true, memberChanged };
    if (memberChanged) {
      const invalidation: Invalidation = { kind: "member", organizationId: key.organizationId, userId: key.createdBy };
      const audit = { ...input.audit, id: memberOutboxId(input.audit.id) };
      this.addOutbox(audit, invalidation);
      result.memberAnnouncement = { outbox: { organizationId: key.organizationId, id: audit.id }, invalidation };
    }
    if (input.mark != null) {
      const invalidation: Invalidation = { kind: "created", marks: [input.mark] };
      this.addOutbox(input.audit, invalidation);
      result.announcement = { outbox: { organizationId: key.organizationId, id: input.audit.id }, invalidation };
    }
    return result;
  }

  async getKey(organizationId: string, keyId: string): Promise<KeyRecord | null> {
    const key = this.find(organizationId, keyId);
    return key === null ? null : copy(key);
  }

  async listKeys(query: ListKeysQuery): Promise<Page<KeyRecord>> {
    const after = query.after === null ? null : Number(query.after);
    const rows: StoredKey[] = [];
    for (let i = this.keyLog.length - 1; i >= 0 && rows.length <= query.limit; i--) {
      const { seq, record: k } = this.keyLog[i];
      if (after !== null && seq >= after) continue;
      if (k.organizationId !== query.organizationId) continue;
      if (query.projectId !== "" && k.projectId !== query.projectId) continue;
      if (query.createdBy !== "" && k.createdBy !== query.createdBy) continue;
      if (!query.showRevoked && k.revokeTime !== null) continue;
      rows.push(this.keyLog[i]);
    }
    return pageOf(rows, query.limit);
  }

  async countSecretHashes(): Promise<number> {
    return this.secrets.size;
  }

  async scanSecretHashes(after: Buffer | null, limit: number): Promise<Buffer[]> {
    const from = after === null ? "" : after.toString("hex");
    return [...this.secrets.keys()]
      .filter((h) => h > from)
      .sort()
      .slice(0, limit)
      .map((h) => Buffer.from(h, "hex"));
  }

  async findByHash(hash: Buffer): Promise<VerifyRecord | null> {
    const secret = this.secrets.get(hash.toString("hex"));
    if (secret === undefined) return null;
    const key = this.keys.get(secret.keyId)!.record;
    return {
      key: copy(key),
      secretExpireTime: secret.expireTime,
      memberRole: this.members.get(pairKey(key.organizationId, key.createdBy))?.role ?? null,
      // No organization record: nobody has switched it off.
      orgEnabled: this.organizations.get(key.organizationId)?.apiAccessEnabled ?? true,
    };
  }

  async updateKey({ organizationId, keyId, patch, now, audit, invalidation }: UpdateKeyCommand): Promise<KeyRecord | null> {
    const key = this.find(organizationId, keyId);
    if (key === null || key.revokeTime !== null) return null;
    if (patch.name !== undefined) key.name = patch.name;
    if (patch.scopes !== undefined) key.scopes = [...patch.scopes];
    if (patch.expireTime !== undefined) key.expireTime = patch.expireTime;
    if (patch.metadata !== undefined) key.metadata = { ...patch.metadata };
    if (patch.limits !== undefined) key.limits = normalizeLimits(patch.limits);
    key.updateTime = now;
    this.addAudit(audit);
    this.addOutbox(audit, invalidation);
    return copy(key);
  }

  async rotateKey({ organizationId, keyId, rotation, now, audit, invalidation }: RotateKeyCommand): Promise<KeyRecord | null> {
    const key = this.find(organizationId, keyId);
    if (key === null || key.revokeTime !== null) return null;
    const graceEnd = rotation.oldSecretExpireTime;
    for (const [hash, secret] of this.secrets) {
      if (secret.keyId !== keyId) continue;
      secret.expireTime = Math.min(secret.expireTime ?? graceEnd, graceEnd);
      // Secrets whose grace is over are deleted rather than kept expired, as in MySQL.
      if (secret.expireTime <= now) this.secrets.delete(hash);
    }
    this.secrets.set(rotation.newHash.toString("hex"), { keyId, expireTime: null });
    key.preview = rotation.newPreview;
    key.rotateTime = now;
    key.previousSecretExpireTime = graceEnd <= now ? null : graceEnd;
    key.updateTime = now;
    this.addAudit(audit);
    this.addOutbox(audit, invalidation);
    return copy(key);
  }

  async revokeKey({ organizationId, keyId, revokedBy, reason, now, audit, permission, invalidation }: RevokeKeyCommand): Promise<{ key: KeyRecord; changed: boolean } | null> {
    const key = this.find(organizationId, keyId);
    if (key === null) return null;
    // As the MySQL store does it: the write's own condition first, the verdict only when it matched nothing.
    if (key.revokeTime === null && mayRevokeCreatedBy(permission.revocable, key.createdBy)) {
      revoke(key, revokedBy, reason, now);
      this.addAudit(audit);
      this.addOutbox(audit, invalidation);
      return { key: copy(key), changed: true };
    }
    return unchangedByRevoke(copy(key), permission);
  }

  async revokeKeysCreatedBy({ organizationId, createdBy, revokedBy, reason, now, audit, invalidation }: RevokeKeysCommand): Promise<ChangedKeys> {
    const changed = this.revokeCreatedBy(organizationId, createdBy, revokedBy, reason, now);
    this.addAudit(audit);
    if (changed.keyIds.length > 0) this.addOutbox(audit, invalidation);
    return changed;
  }

  async getMember(organizationId: string, userId: string): Promise<MemberRecord | null> {
    const member = this.members.get(pairKey(organizationId, userId));
    return member === undefined ? null : { ...member };
  }

  async setMemberRole({ organizationId, userId, role, now, audit, invalidation }: SetMemberRoleCommand): Promise<MemberRecord> {
    const member = this.upsertMember(organizationId, userId, role, now);
    this.addAudit(audit);
    this.addOutbox(audit, invalidation);
    return { ...member };
  }

  async removeMember({ organizationId, userId, revokeKeys, now, audit, invalidation }: RemoveMemberCommand): Promise<ChangedKeys> {
    this.members.delete(pairKey(organizationId, userId));
    const changed = revokeKeys
      ? this.revokeCreatedBy(organizationId, userId, audit.actorUserId, MEMBER_REMOVED_REASON, now)
      : { keyIds: [] };
    this.addAudit(audit);
    this.addOutbox(audit, invalidation);
    return changed;
  }

  async setApiAccess({ organizationId, enabled, now, audit, invalidation }: SetApiAccessCommand): Promise<OrganizationRecord> {
    const org = { id: organizationId, apiAccessEnabled: enabled, updateTime: now };
    this.organizations.set(organizationId, org);
    this.addAudit(audit);
    this.addOutbox(audit, invalidation);
    return { ...org };
  }

  async listAuditEvents({ organizationId, after, limit }: AuditQuery): Promise<Page<AuditRecord>> {
    const before = after === null ? null : Number(after);
    const rows: { seq: number; record: AuditRecord }[] = [];
    for (let i = this.audit.length - 1; i >= 0 && rows.length <= limit; i--) {
      const event = this.audit[i];
      if (before !== null && event.seq >= before) continue;
      if (event.record.organizationId === organizationId) rows.push(event);
    }
    return pageOf(rows, limit);
  }

  async replaceSecretHash(organizationId: string, keyId: string, oldHash: Buffer, newHash: Buffer): Promise<boolean> {
    const secret = this.secrets.get(oldHash.toString("hex"));
    if (secret === undefined || secret.keyId !== keyId || this.find(organizationId, keyId) === null) return false;
    this.secrets.delete(oldHash.toString("hex"));
    this.secrets.set(newHash.toString("hex"), secret);
    return true;
  }

  async touchLastUsed(entries: ReadonlyMap<string, ReadonlyMap<string, number>>): Promise<void> {
    for (const [organizationId, times] of entries) {
      for (const [keyId, time] of times) {
        const key = this.find(organizationId, keyId);
        if (key !== null && (key.lastUsedTime === null || key.lastUsedTime < time)) key.lastUsedTime = time;
      }
    }
  }

  creditLedger(): CreditLedger {
    const ledger = this.credits;
    // The store's ledger outlives a limiter's stop().
    return { load: (o, k, m) => ledger.load(o, k, m), save: (entries) => ledger.save(entries), close: () => Promise.resolve() };
  }

  /** The stored record itself (not a copy), or null when not in this organization. */
  private find(organizationId: string, keyId: string): KeyRecord | null {
    const key = this.keys.get(keyId)?.record;
    return key !== undefined && key.organizationId === organizationId ? key : null;
  }

  private upsertMember(organizationId: string, userId: string, role: Role, now: number): MemberRecord {
    const member = { organizationId, userId, role, updateTime: now };
    this.members.set(pairKey(organizationId, userId), member);
    return member;
  }

  private revokeCreatedBy(organizationId: string, createdBy: string, revokedBy: string, reason: string, now: number): ChangedKeys {
    const keyIds: string[] = [];
    for (const { record: key } of this.keyLog) {
      if (key.organizationId === organizationId && key.createdBy === createdBy && key.revokeTime === null) {
        revoke(key, revokedBy, reason, now);
        keyIds.push(key.id);
      }
    }
    return { keyIds };
  }

  private addAudit(record: AuditRecord): void {
    this.audit.push({ seq: this.nextSeq++, record: copy(record) });
  }

  private addOutbox(audit: AuditRecord, invalidation: Invalidation | undefined): void {
    if (invalidation === undefined) return;
    const entry = { organizationId: audit.organizationId, id: audit.id, invalidation: copy(invalidation), createTime: audit.time };
    this.outbox.set(pairKey(audit.organizationId, audit.id), entry);
  }

  async pendingInvalidations(createdBefore: number, limit: number): Promise<OutboxEntry[]> {
    return [...this.outbox.values()]
      .filter((e) => e.createTime < createdBefore)
      .sort((a, b) => a.createTime - b.createTime)
      .slice(0, limit)
      .map(copy);
  }

  async deleteInvalidations(refs: readonly OutboxRef[]): Promise<void> {
    for (const ref of refs) this.outbox.delete(pairKey(ref.organizationId, ref.id));
  }
}

function revoke(key: KeyRecord, revokedBy: string, reason: string, now: number): void {
  key.revokeTime = now;
  key.revokedBy = revokedBy;
  key.revokeReason = reason;
  key.updateTime = now;
}

/** One map key from two ids (JSON keeps any pair of strings apart). */
function pairKey(a: string, b: string): string {
  return JSON.stringify([a, b]);
}

/** No limits, or all of them 0 (unlimited), are the same: null. */
/** A page from up to limit+1 rows, newest first: the extra row only says that there is more. */
function pageOf<T>(rows: { seq: number; record: T }[], limit: number): Page<T> {
  const items = rows.slice(0, limit);
  return {
    items: items.map((r) => copy(r.record)),
    next: rows.length > limit && items.length > 0 ? String(items[items.length - 1].seq) : null,
  };
}

function copy<T>(value: T): T {
  return structuredClone(value);
}
