// Key management: create, list, get, update, rotate, revoke. Validates input,
// applies the role policy, writes through the store, and announces every
// change that affects verification before returning.
import { create } from "@bufbuild/protobuf";
import {
  type CreateKeyRequest,
  type CreateKeyResponse,
  CreateKeyResponseSchema,
  type GetKeyRequest,
  type GetKeyResponse,
  GetKeyResponseSchema,
  type ListKeysRequest,
  type ListKeysResponse,
  ListKeysResponseSchema,
  type RevokeKeyRequest,
  type Role,
  type RevokeKeyResponse,
  RevokeKeyResponseSchema,
  type RevokeKeysRequest,
  type RevokeKeysResponse,
  RevokeKeysResponseSchema,
  type RotateKeyRequest,
  type RotateKeyResponse,
  RotateKeyResponseSchema,
  type UpdateKeyRequest,
  type UpdateKeyResponse,
  UpdateKeyResponseSchema,
} from "../../gen/apikeys/v1/apikeys_pb.js";
import type { KeyPatch, Store } from "./ports.js";
import { auditEvent } from "./audit.js";
import type { CallContext } from "./call-context.js";
import { ApiError, Status, invalidArgument, keyNotFound } from "./errors.js";
import type { SecretHasher } from "./hashing.js";
import type { Announcement, Invalidation, Invalidator } from "./ports.js";
import { hashMark } from "./membership.js";
import { generateSecret, newKeyId, previewOf } from "./key-format.js";
import { toApiKey } from "./mapping.js";
import { decodePageToken, encodePageToken } from "./page-token.js";
import { type KeyPolicy, mayViewAll, requireMayChange, requireRole, revocable } from "./policy.js";
import type { KeyRecord } from "./records.js";
import {
  LIMITS,
  checkLimits,
  checkMetadata,
  checkPageSize,
  checkPrefix,
  checkScopes,
  checkText,
  durationMs,
  optionalId,
  requireActor,
  requireId,
  timestampToMs,
} from "./validation.js";

export interface KeyServiceOptions {
  store: Store;
  hasher: SecretHasher;
  policy: KeyPolicy;
  invalidator: Invalidator;
  defaultPrefix: string;
  /** Announce every new secret ("created"), for the instances' membership filters (src/keys/membership.ts). */
  announceSecrets?: boolean;
  now?: () => number;
}

const UPDATABLE = new Set(["name", "scopes", "expire_time", "metadata", "limits"]);

export class KeyService {
  private readonly store: Store;
  private readonly hasher: SecretHasher;
  private readonly policy: KeyPolicy;
  private readonly invalidator: Invalidator;
  private readonly defaultPrefix: string;
  private readonly announceSecrets: boolean;
  /** The broadcast of each batch's "created" row, shared by the batch's creates (see announce). */
  private readonly announcing = new WeakMap<Announcement, Promise<void>>();
  private readonly now: () => number;

  constructor(options: KeyServiceOptions) {
    this.store = options.store;
    this.hasher = options.hasher;
    this.policy = options.policy;
    this.invalidator = options.invalidator;
    this.defaultPrefix = checkPrefix(options.defaultPrefix);
    this.announceSecrets = options.announceSecrets ?? false;
    this.now = options.now ?? Date.now;
  }

  async createKey(req: CreateKeyRequest, call: CallContext): Promise<CreateKeyResponse> {
    const now = this.now();
    const orgId = requireId("organization_id", req.organizationId);
    const projectId = optionalId("project_id", req.projectId);
    const actor = requireActor(req.actor);
    const name = checkText("name", req.name, LIMITS.nameLength);
    const prefix = req.prefix === "" ? this.defaultPrefix : checkPrefix(req.prefix);
    const scopes = checkScopes("scopes", req.scopes);
    const metadata = checkMetadata("metadata", req.metadata);
    const limits = checkLimits("limits", req.limits);
    const requestId = checkText("request_id", req.requestId, LIMITS.requestIdLength);
    let expireTime: number | null = null;
    if (req.expiration.case === "expireTime") {
      expireTime = timestampToMs("expire_time", req.expiration.value);
      if (expireTime <= now) throw invalidArgument("expire_time", "must be in the future");
    } else if (req.expiration.case === "ttl") {
      const ttl = durationMs("ttl", req.expiration.value);
      if (ttl <= 0) throw invalidArgument("ttl", "must be positive");
      expireTime = now + ttl;
    }
    requireRole(this.policy, "create", actor.role, "creating a key");
    const enrollRole = await this.creatorEnrollment(orgId, actor);

    const secret = generateSecret(prefix);
    const key: KeyRecord = {
      id: newKeyId(),
      organizationId: orgId,
      projectId,
      name,
      prefix,
      preview: previewOf(secret),
      scopes,
      createdBy: actor.userId,
      createTime: now,
      updateTime: now,
      expireTime,
      lastUsedTime: null,
      revokeTime: null,
      revokedBy: "",
      revokeReason: "",
      rotateTime: null,
      previousSecretExpireTime: null,
      metadata,
      limits,
    };
    const hash = this.hasher.hash(secret);
    const result = await this.store.createKey({
      key,
      hash,
      enrollRole,
      // Idempotency is per caller: two callers never collide on a request id.
      requestId: requestId === "" ? "" : `${call.caller}/${requestId}`,
      audit: auditEvent(call, actor, orgId, "key.create", now, key.id, projectId ? { project_id: projectId } : {}),
      mark: this.announceSecrets ? hashMark(hash) : null,
    });
    // A request id already used: the key made then, but only to whom may see it (a user replaying another
    // user's request id learns nothing of that key, not even its id).
    if (!result.created && result.key.createdBy !== actor.userId && !mayViewAll(this.policy, actor.role)) {
      throw new ApiError(Status.ALREADY_EXISTS, "REQUEST_ID_USED", "request_id was already used for another user's request; use a new one", {
        field: "request_id",
      });
    }
    // Only when the creator was added as a member may instances hold their other keys as a non-member's; a
    // broadcast on every create would cost each CreateKey a Redis round trip, every instance's ack and a scan
    // of every instance's cache, for nothing.
    const announced: Promise<void>[] = [];
    // Both are in the outbox too (the store writes them with the key): a failed broadcast must not fail a create.
    if (result.memberAnnouncement !== undefined) announced.push(this.announce(result.memberAnnouncement));
    else if (result.memberChanged) announced.push(this.invalidator.invalidate({ kind: "member", organizationId: orgId, userId: actor.userId }));
    // Every instance's membership filter holds the new secret before this returns, so it verifies everywhere at
    // once; unless the broadcast fails: then the outbox row written with the key announces it within the outbox's
    // bound (docs/revocation.md), and the caller still gets the secret, which a retry could never return.
    if (result.created && result.announcement !== undefined) announced.push(this.announce(result.announcement));
    await Promise.all(announced);
    return create(CreateKeyResponseSchema, {
      key: toApiKey(result.key, now),
      secret: result.created ? secret : "",
    });
  }

  /**
   * Broadcasts a batch's "created" row once for all its keys (they share the
   * Announcement object) and deletes the row. Never fails: the row stays for
   * the outbox worker of any healthy instance when the broadcast does.
   */
  private announce(announcement: Announcement): Promise<void> {
    let announced = this.announcing.get(announcement);
    if (announced === undefined) {
      announced = this.invalidator.invalidate(announcement.invalidation, announcement.outbox).catch(() => {});
      this.announcing.set(announcement, announced);
    }
    return announced;
  }

  /**
   * Membership changes only through OrganizationService; a key acts as its
   * creator's stored role. So a CreateKey never changes a member's role: a
   * stale or inflated claim (a demoted user's old OWNER) neither restores it
   * nor passes the create rule, which the stored role must meet too. A
   * creator who is not a member is added (with the claimed role, at most
   * KEY_POLICY enroll) only when the policy allows it and the user was never
   * removed: one who has keys here but no membership was removed, and their
   * suspended keys must stay suspended until OrganizationService adds them.
   * Returns the role to add the creator with, or null when they are a member.
   */
  private async creatorEnrollment(orgId: string, actor: { userId: string; role: Role }): Promise<Role | null> {
    const member = await this.store.getMember(orgId, actor.userId);
    if (member !== null) return this.asMember(member.role);
    const enroll = this.policy.enroll;
    if (enroll === null) {
      throw notAMember(`user ${actor.userId} is not a member of the organization: add them with OrganizationService.SetMemberRole (KEY_POLICY enroll=none)`);
    }
    const earlier = await this.store.listKeys({ organizationId: orgId, projectId: "", createdBy: actor.userId, showRevoked: true, after: null, limit: 1 });
    if (earlier.items.length > 0) {
      // A key and its creator's membership are written together: a first key committed since the read above
      // (a concurrent first CreateKey) comes with its membership; only a removal leaves keys without one.
      const now = await this.store.getMember(orgId, actor.userId);
      if (now !== null) return this.asMember(now.role);
      throw notAMember(`user ${actor.userId} was removed from the organization: add them again with OrganizationService.SetMemberRole`);
    }
    return Math.min(actor.role, enroll) as Role;
  }

  /** A member creates keys by their stored role, whatever the caller claims for them. */
  private asMember(stored: Role): null {
    requireRole(this.policy, "create", stored, "creating a key (by the actor's role in the organization)");
    return null;
  }

  async listKeys(req: ListKeysRequest, _call: CallContext): Promise<ListKeysResponse> {
    const now = this.now();
    const orgId = requireId("organization_id", req.organizationId);
    const projectId = optionalId("project_id", req.projectId);
    const actor = requireActor(req.actor);
    let createdBy = optionalId("created_by", req.createdBy);
    const pageSize = checkPageSize(req.pageSize);
    if (!mayViewAll(this.policy, actor.role)) {
      // Below view_all an actor sees only their own keys.
      if (createdBy !== "" && createdBy !== actor.userId) requireRole(this.policy, "view_all", actor.role, "listing another user's keys");
      createdBy = actor.userId;
    }
    const filters = [orgId, projectId, createdBy, req.showRevoked];
    const after = decodePageToken(req.pageToken, filters);
    const page = await this.store.listKeys({
      organizationId: orgId,
      projectId,
      createdBy,
      showRevoked: req.showRevoked,
      after,
      limit: pageSize,
    });
    return create(ListKeysResponseSchema, {
      keys: page.items.map((k) => toApiKey(k, now)),
      nextPageToken: encodePageToken(page.next, filters),
    });
  }

  async getKey(req: GetKeyRequest, _call: CallContext): Promise<GetKeyResponse> {
    const orgId = requireId("organization_id", req.organizationId);
    const keyId = requireId("key_id", req.keyId);
    const actor = requireActor(req.actor);
    const key = await this.findKey(orgId, keyId);
    if (key.createdBy !== actor.userId) requireRole(this.policy, "view_all", actor.role, "viewing another user's key");
    return create(GetKeyResponseSchema, { key: toApiKey(key, this.now()) });
  }

  async updateKey(req: UpdateKeyRequest, call: CallContext): Promise<UpdateKeyResponse> {
    const now = this.now();
    const orgId = requireId("organization_id", req.organizationId);
    const keyId = requireId("key_id", req.keyId);
    const actor = requireActor(req.actor);
    const paths = req.updateMask?.paths ?? [];
    if (paths.length === 0) throw invalidArgument("update_mask", `is required: name any of ${[...UPDATABLE].join(", ")}`);
    const patch: KeyPatch = {};
    for (const path of paths) {
      switch (path) {
        case "name":
          patch.name = checkText("name", req.name, LIMITS.nameLength);
          break;
        case "scopes":
          patch.scopes = checkScopes("scopes", req.scopes);
          break;
        case "expire_time":
          patch.expireTime = req.expireTime ? timestampToMs("expire_time", req.expireTime) : null;
          break;
        case "metadata":
          patch.metadata = checkMetadata("metadata", req.metadata);
          break;
        case "limits":
          patch.limits = checkLimits("limits", req.limits);
          break;
        default:
          // Not echoed: a path is whatever the client sent (a secret pasted into the wrong field, say).
          throw invalidArgument("update_mask", `has an unknown path (allowed: ${[...UPDATABLE].join(", ")})`);
      }
    }
    const key = await this.findKey(orgId, keyId);
    requireMayChange(this.policy, actor.userId, actor.role, key.createdBy, "updating a key");
    // Limits and metadata (plans, tiers) are a privilege of their own: owning a key is not enough to lift them.
    if (patch.limits !== undefined || patch.metadata !== undefined) {
      requireRole(this.policy, "update_limits", actor.role, "changing a key's limits or metadata");
    }
    if (key.revokeTime !== null) throw keyRevoked(keyId, "updated");
    const audit = auditEvent(call, actor, orgId, "key.update", now, keyId, { fields: paths.join(",") });
    const invalidation: Invalidation = { kind: "keys", keyIds: [keyId] };
    const updated = await this.store.updateKey({ organizationId: orgId, keyId, patch, now, audit, invalidation });
    if (!updated) throw await this.notChanged(orgId, keyId, "updated");
    await this.invalidator.invalidate(invalidation, { organizationId: orgId, id: audit.id });
    return create(UpdateKeyResponseSchema, { key: toApiKey(updated, now) });
  }

  async rotateKey(req: RotateKeyRequest, call: CallContext): Promise<RotateKeyResponse> {
    const now = this.now();
    const orgId = requireId("organization_id", req.organizationId);
    const keyId = requireId("key_id", req.keyId);
    const actor = requireActor(req.actor);
    const grace = durationMs("grace_period", req.gracePeriod);
    if (grace > LIMITS.maxGraceMs) throw invalidArgument("grace_period", "must be at most 30 days");
    const key = await this.findKey(orgId, keyId);
    requireMayChange(this.policy, actor.userId, actor.role, key.createdBy, "rotating a key");
    if (key.revokeTime !== null) throw keyRevoked(keyId, "rotated");
    const secret = generateSecret(key.prefix);
    const audit = auditEvent(call, actor, orgId, "key.rotate", now, keyId, { grace_seconds: String(Math.floor(grace / 1000)) });
    const invalidation: Invalidation = { kind: "keys", keyIds: [keyId] };
    const newHash = this.hasher.hash(secret);
    const rotated = await this.store.rotateKey({
      organizationId: orgId,
      keyId,
      rotation: { newHash, newPreview: previewOf(secret), oldSecretExpireTime: now + grace },
      now,
      audit,
      invalidation,
    });
    if (!rotated) throw await this.notChanged(orgId, keyId, "rotated");
    await Promise.all([
      this.invalidator.invalidate(invalidation, { organizationId: orgId, id: audit.id }),
      this.announceSecrets ? this.invalidator.invalidate({ kind: "created", marks: [hashMark(newHash)] }) : undefined,
    ]);
    return create(RotateKeyResponseSchema, { key: toApiKey(rotated, now), secret });
  }

  async revokeKey(req: RevokeKeyRequest, call: CallContext): Promise<RevokeKeyResponse> {
    const now = this.now();
    const orgId = requireId("organization_id", req.organizationId);
    const keyId = requireId("key_id", req.keyId);
    const actor = requireActor(req.actor);
    const reason = checkText("reason", req.reason, LIMITS.reasonLength);
    // The policy goes to the store, which makes it a condition of its write: one round trip, and no window
    // between the check and the write.
    const audit = auditEvent(call, actor, orgId, "key.revoke", now, keyId, reason ? { reason } : {});
    const invalidation: Invalidation = { kind: "keys", keyIds: [keyId] };
    const result = await this.store.revokeKey({
      organizationId: orgId,
      keyId,
      revokedBy: actor.userId,
      reason,
      now,
      audit,
      invalidation,
      permission: {
        revocable: revocable(this.policy, actor.userId, actor.role),
        check: (key) => requireMayChange(this.policy, actor.userId, actor.role, key.createdBy, "revoking a key"),
      },
    });
    if (!result) throw keyNotFound(keyId);
    // Also on a repeated revoke: the first call may have failed after its write, before its broadcast.
    await this.invalidator.invalidate(invalidation, { organizationId: orgId, id: audit.id });
    return create(RevokeKeyResponseSchema, { key: toApiKey(result.key, now) });
  }

  async revokeKeys(req: RevokeKeysRequest, call: CallContext): Promise<RevokeKeysResponse> {
    const now = this.now();
    const orgId = requireId("organization_id", req.organizationId);
    const actor = requireActor(req.actor);
    const createdBy = requireId("created_by", req.createdBy);
    const reason = checkText("reason", req.reason, LIMITS.reasonLength);
    requireMayChange(this.policy, actor.userId, actor.role, createdBy, "revoking keys");
    const audit = auditEvent(call, actor, orgId, "key.revoke_all", now, "", { created_by: createdBy, ...(reason ? { reason } : {}) });
    const changed = await this.store.revokeKeysCreatedBy({
      organizationId: orgId,
      createdBy,
      revokedBy: actor.userId,
      reason,
      now,
      audit,
      // Which keys it revokes is known only in the transaction: the outbox names their creator (a superset).
      invalidation: { kind: "member", organizationId: orgId, userId: createdBy },
    });
    // With nothing revoked there is nothing to announce (and no outbox row).
    if (changed.keyIds.length > 0) await this.invalidator.invalidate({ kind: "keys", keyIds: changed.keyIds }, { organizationId: orgId, id: audit.id });
    return create(RevokeKeysResponseSchema, { revokedCount: changed.keyIds.length });
  }

  /** Why the store changed nothing: the key was revoked meanwhile (a racing RevokeKey), or is gone. */
  private async notChanged(orgId: string, keyId: string, verb: string): Promise<ApiError> {
    const key = await this.store.getKey(orgId, keyId);
    return key !== null && key.revokeTime !== null ? keyRevoked(keyId, verb) : keyNotFound(keyId);
  }

  private async findKey(orgId: string, keyId: string): Promise<KeyRecord> {
    const key = await this.store.getKey(orgId, keyId);
    if (!key) throw keyNotFound(keyId);
    return key;
  }
}

function notAMember(message: string): ApiError {
  return new ApiError(Status.PERMISSION_DENIED, "NOT_A_MEMBER", message);
}

function keyRevoked(keyId: string, verb: string): ApiError {
  return new ApiError(Status.FAILED_PRECONDITION, "KEY_REVOKED", `key ${keyId} is revoked and cannot be ${verb}`, {
    key_id: keyId,
  });
}
