// The behaviour every Store must have. MemoryStore and MySqlStore both run
// this suite (test/unit/memory-store.test.ts, test/integration/mysql-store.test.ts).
// One store serves the whole suite; each test works in organizations of its
// own, so tests never see each other's rows.
import { randomBytes } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Role } from "../../gen/apikeys/v1/apikeys_pb.js";
import type { AuditRecord, KeyRecord } from "../../src/keys/records.js";
import { type Revocable, mayRevokeCreatedBy } from "../../src/keys/policy.js";
import type { ListKeysQuery, RevokePermission, Store } from "../../src/keys/ports.js";
import { type NewKeyOptions, T0, auditRecord, keyRecord as buildKey, newKey, uid } from "../helpers/records.js";

const MINUTE = 60_000;

function secretHash(): Buffer {
  return randomBytes(32);
}

function keyRecord(organizationId: string, fields: Partial<KeyRecord> = {}): KeyRecord {
  return buildKey({ organizationId, ...fields });
}

function listQuery(organizationId: string, fields: Partial<ListKeysQuery> = {}): ListKeysQuery {
  return { organizationId, projectId: "", createdBy: "", showRevoked: true, after: null, limit: 100, ...fields };
}

/** A revoke policy that allows everything. */
const ALLOW: RevokePermission = { revocable: { kind: "any" }, check: () => {} };

export function describeStoreContract(name: string, open: () => Promise<{ store: Store; cleanup: () => Promise<void> }>): void {
  describe(`${name} store contract`, () => {
    let store: Store;
    let cleanup: (() => Promise<void>) | undefined;

    beforeAll(async () => {
      ({ store, cleanup } = await open());
    });

    afterAll(async () => {
      await cleanup?.();
    });

    async function create(organizationId: string, options: NewKeyOptions = {}) {
      const input = newKey(organizationId, options);
      const result = await store.createKey(input);
      return { ...result, input };
    }

    /** Every key of the query, page by page, checking each page's size. */
    async function listAll(query: ListKeysQuery): Promise<KeyRecord[]> {
      const keys: KeyRecord[] = [];
      let after: string | null = null;
      for (;;) {
        const page = await store.listKeys({ ...query, after });
        expect(page.items.length).toBeLessThanOrEqual(query.limit);
        keys.push(...page.items);
        if (page.next === null) return keys;
        expect(page.items.length).toBe(query.limit);
        after = page.next;
      }
    }

    async function auditEvents(organizationId: string): Promise<AuditRecord[]> {
      const events: AuditRecord[] = [];
      let after: string | null = null;
      for (;;) {
        const page = await store.listAuditEvents({ organizationId, after, limit: 3 });
        events.push(...page.items);
        if (page.next === null) return events;
        after = page.next;
      }
    }

    it("answers ping", async () => {
      await expect(store.ping()).resolves.toBeUndefined();
    });

    it("counts and scans every stored secret hash, in byte order, a page at a time (the membership filter's load)", async () => {
      const before = await store.countSecretHashes();
      const made = await Promise.all([uid("org"), uid("org"), uid("org")].map((org) => create(org)));
      expect(await store.countSecretHashes()).toBe(before + 3);
      const all: Buffer[] = [];
      for (let after: Buffer | null = null; ; ) {
        const page: Buffer[] = await store.scanSecretHashes(after, 2);
        all.push(...page);
        if (page.length < 2) break;
        after = page[page.length - 1];
      }
      expect(all.length).toBe(before + 3);
      for (let i = 1; i < all.length; i++) expect(Buffer.compare(all[i - 1], all[i])).toBe(-1);
      for (const m of made) expect(all.some((h) => h.equals(m.input.hash))).toBe(true);
    });

    describe("createKey and getKey", () => {
      it("keeps every field of the key", async () => {
        const org = uid("org");
        const full = keyRecord(org, {
          projectId: "proj_1",
          name: "Ünïcode name ✓",
          prefix: "trv_ak",
          scopes: ["documents:read", "documents:*"],
          createdBy: "u_alice",
          createTime: T0,
          updateTime: T0 + 1,
          expireTime: T0 + 7 * 24 * 60 * MINUTE + 999,
          metadata: { team: "search", "env.name": "prod ✓" },
          limits: { requestsPerMinute: 60, requestsPerDay: 0, monthlyCredits: 9_007_199_254_740_991 },
        });
        const { key, created } = await store.createKey({ ...newKey(org), key: full });
        expect(created).toBe(true);
        expect(key).toEqual(full);
        expect(await store.getKey(org, full.id)).toEqual(full);

        const minimal = keyRecord(org);
        await store.createKey({ ...newKey(org), key: minimal });
        expect(await store.getKey(org, minimal.id)).toEqual(minimal);
      });

      it("stores all-zero limits as no limits", async () => {
        const org = uid("org");
        const { key } = await create(org, { key: { limits: { requestsPerMinute: 0, requestsPerDay: 0, monthlyCredits: 0 } } });
        expect(key.limits).toBeNull();
        expect((await store.getKey(org, key.id))!.limits).toBeNull();
      });

      it("finds a key only in its own organization", async () => {
        const org = uid("org");
        const { key } = await create(org);
        expect(await store.getKey(uid("org"), key.id)).toBeNull();
        expect(await store.getKey(org, uid("key"))).toBeNull();
      });

      it("adds a creator who is not a member with enrollRole, and an enabled organization", async () => {
        const org = uid("org");
        const { input, key } = await create(org, { enrollRole: Role.ADMIN });
        expect(await store.findByHash(input.hash)).toEqual({ key, secretExpireTime: null, memberRole: Role.ADMIN, orgEnabled: true });
        expect(await store.getMember(org, "u_creator")).toMatchObject({ organizationId: org, userId: "u_creator", role: Role.ADMIN });

        // A member's next key never changes the stored role: membership changes only through setMemberRole.
        await create(org, { enrollRole: Role.MEMBER });
        expect((await store.findByHash(input.hash))!.memberRole).toBe(Role.ADMIN);
        // Without an enrollRole a creator who is not a member stays none: the key is made, and verifies as a non-member's.
        const stranger = await create(org, { enrollRole: null, key: { createdBy: "u_stranger" } });
        expect((await store.findByHash(stranger.input.hash))!.memberRole).toBeNull();
        expect(await store.getMember(org, "u_stranger")).toBeNull();
      });

      it("says whether the create added its creator as a member", async () => {
        const org = uid("org");
        const memberChanged = async (options: NewKeyOptions) => (await create(org, options)).memberChanged;
        expect(await memberChanged({ enrollRole: Role.MEMBER }), "a new member").toBe(true);
        expect(await memberChanged({ enrollRole: Role.MEMBER }), "the same role again").toBe(false);
        expect(await memberChanged({ enrollRole: Role.ADMIN }), "another role: not taken").toBe(false);
        await store.setMemberRole({ organizationId: org, userId: "u_creator", role: Role.VIEWER, now: T0, audit: auditRecord(org, "member.set_role") });
        expect(await memberChanged({ enrollRole: Role.ADMIN }), "a role set in between stays").toBe(false);
        expect((await store.getMember(org, "u_creator"))!.role).toBe(Role.VIEWER);
        await store.removeMember({ organizationId: org, userId: "u_creator", revokeKeys: false, now: T0, audit: auditRecord(org, "member.remove") });
        expect(await memberChanged({ enrollRole: null }), "removed, and not added back").toBe(false);
        expect(await store.getMember(org, "u_creator")).toBeNull();
        expect(await memberChanged({ enrollRole: Role.ADMIN }), "added back when asked to").toBe(true);
        expect(await memberChanged({ enrollRole: Role.ADMIN, key: { createdBy: "u_other" } }), "another user").toBe(true);
        await create(org, { requestId: "web/once", enrollRole: Role.ADMIN, key: { createdBy: "u_third" } });
        expect(await memberChanged({ requestId: "web/once", enrollRole: Role.OWNER, key: { createdBy: "u_fourth" } }), "a retry creates nothing").toBe(false);
        expect(await store.getMember(org, "u_fourth")).toBeNull();
      });

      describe("many at once", () => {
        // The first is written alone; the rest arrive meanwhile and (MySQL) go in one batch.
        const plan: [string, Role, string][] = [
          ["u_x", Role.MEMBER, ""],
          ["u_y", Role.MEMBER, ""],
          ["u_a", Role.MEMBER, ""],
          ["u_a", Role.MEMBER, ""],
          ["u_a", Role.ADMIN, ""],
          ["u_b", Role.VIEWER, "web/taken"],
          ["u_a", Role.ADMIN, ""],
          ["u_c", Role.OWNER, ""],
        ];

        async function createAll(org: string, takenBy: string | null) {
          const taken = takenBy === null ? null : await create(org, { requestId: "web/taken", key: { createdBy: takenBy }, enrollRole: Role.OWNER });
          const inputs = plan.map(([createdBy, enrollRole, requestId]) => newKey(org, { key: { createdBy }, enrollRole, requestId }));
          return { taken, inputs, results: await Promise.all(inputs.map((input) => store.createKey(input))) };
        }

        it("gives each its own answer, as if made one after another", async () => {
          const org = uid("org");
          const { inputs, results } = await createAll(org, null);
          expect(results.map((r) => r.created)).toEqual(plan.map(() => true));
          // Each creator is added by its first create; later ones leave the membership as it is.
          expect(results.map((r) => r.memberChanged)).toEqual([true, true, true, false, false, true, false, true]);
          for (const [i, input] of inputs.entries()) {
            expect(results[i].key).toEqual(input.key);
            expect(await store.getKey(org, input.key.id)).toEqual(input.key);
            expect((await store.findByHash(input.hash))!.key.id).toBe(input.key.id);
          }
          expect((await store.findByHash(inputs[6].hash))!.memberRole).toBe(Role.MEMBER);
          expect((await auditEvents(org)).map((e) => e.id).sort()).toEqual(inputs.map((i) => i.audit.id).sort());
        });

        it("answers a repeated request id among them with the first key, and writes all the others", async () => {
          const org = uid("org");
          const { taken, inputs, results } = await createAll(org, "u_b");
          expect(results.map((r) => r.created)).toEqual([true, true, true, true, true, false, true, true]);
          expect(results.map((r) => r.memberChanged)).toEqual([true, true, true, false, false, false, false, true]);
          expect(results[5].key).toEqual(taken!.key);
          expect(await store.findByHash(inputs[5].hash)).toBeNull();
          for (const i of [0, 1, 2, 3, 4, 6, 7]) expect(await store.getKey(org, inputs[i].key.id)).toEqual(inputs[i].key);
          // The retry changed nothing, the creator's role included.
          expect((await store.findByHash(taken!.input.hash))!.memberRole).toBe(Role.OWNER);
          expect(await auditEvents(org)).toHaveLength(8);
        });
      });

      it("does not re-enable a switched-off organization", async () => {
        const org = uid("org");
        await store.setApiAccess({ organizationId: org, enabled: false, now: T0, audit: auditRecord(org, "org.disable_api") });
        const { input } = await create(org);
        expect((await store.findByHash(input.hash))!.orgEnabled).toBe(false);
      });

      it("writes the audit event", async () => {
        const org = uid("org");
        const { input } = await create(org);
        expect(await auditEvents(org)).toEqual([input.audit]);
      });
    });

    describe("idempotent createKey", () => {
      it("returns the first key for a repeated request id and inserts nothing", async () => {
        const org = uid("org");
        const first = await create(org, { requestId: "web/req-1" });
        const again = await create(org, { requestId: "web/req-1", key: { name: "other" } });
        expect(again.created).toBe(false);
        expect(again.key).toEqual(first.key);
        expect(await store.findByHash(again.input.hash)).toBeNull();
        expect(await store.getKey(org, again.input.key.id)).toBeNull();
        expect((await listAll(listQuery(org))).map((k) => k.id)).toEqual([first.key.id]);
        expect((await auditEvents(org)).map((e) => e.id)).toEqual([first.input.audit.id]);
      });

      it("scopes request ids to the organization and ignores empty ones", async () => {
        const org = uid("org");
        const a = await create(org, { requestId: "web/req-1" });
        const b = await create(uid("org"), { requestId: "web/req-1" });
        expect(b.created).toBe(true);
        expect(b.key.id).not.toBe(a.key.id);
        const c = await create(org, { requestId: "" });
        const d = await create(org, { requestId: "" });
        expect([c.created, d.created]).toEqual([true, true]);
        expect(await listAll(listQuery(org))).toHaveLength(3);
      });

      it("creates exactly one key for 20 concurrent creates with one request id", async () => {
        const org = uid("org");
        const inputs = Array.from({ length: 20 }, () => newKey(org, { requestId: "web/concurrent" }));
        const results = await Promise.all(inputs.map((input) => store.createKey(input)));
        const winners = results.filter((r) => r.created);
        expect(winners).toHaveLength(1);
        const id = winners[0].key.id;
        expect(new Set(results.map((r) => r.key.id))).toEqual(new Set([id]));
        expect((await listAll(listQuery(org))).map((k) => k.id)).toEqual([id]);
        expect(await auditEvents(org)).toHaveLength(1);
        const found = await Promise.all(inputs.map((input) => store.findByHash(input.hash)));
        expect(found.filter((f) => f !== null)).toHaveLength(1);
      });
    });

    describe("listKeys", () => {
      it("pages newest first and ends exactly at the last key", async () => {
        const org = uid("org");
        const ids: string[] = [];
        for (let i = 0; i < 14; i++) ids.push((await create(org)).key.id);
        const first = await store.listKeys(listQuery(org, { limit: 7 }));
        expect(first.items.map((k) => k.id)).toEqual(ids.slice(7).reverse());
        expect(first.next).not.toBeNull();
        const second = await store.listKeys(listQuery(org, { limit: 7, after: first.next }));
        expect(second.items.map((k) => k.id)).toEqual(ids.slice(0, 7).reverse());
        expect(second.next).toBeNull();
      });

      it("has no duplicates or gaps while keys are added between pages", async () => {
        const org = uid("org");
        const original: string[] = [];
        for (let i = 0; i < 25; i++) original.push((await create(org)).key.id);
        const seen: string[] = [];
        let after: string | null = null;
        let pages = 0;
        do {
          const page = await store.listKeys(listQuery(org, { limit: 7, after }));
          seen.push(...page.items.map((k) => k.id));
          after = page.next;
          pages++;
          for (let i = 0; i < 3; i++) await create(org);
        } while (after !== null);
        expect(pages).toBe(4);
        expect(seen).toEqual([...original].reverse());
      });

      it("filters by project, creator and revocation", async () => {
        const org = uid("org");
        const a1 = (await create(org, { key: { projectId: "p1", createdBy: "u_a" } })).key;
        const b1 = (await create(org, { key: { projectId: "p1", createdBy: "u_b" } })).key;
        const a2 = (await create(org, { key: { projectId: "p2", createdBy: "u_a" } })).key;
        const revoked = (await create(org, { key: { projectId: "p1", createdBy: "u_a" } })).key;
        await store.revokeKey({ organizationId: org, keyId: revoked.id, revokedBy: "u_admin", reason: "", now: T0 + 1, audit: auditRecord(org, "key.revoke"), permission: ALLOW });
        await create(uid("org"), { key: { projectId: "p1", createdBy: "u_a" } });

        const ids = async (fields: Partial<ListKeysQuery>) => (await listAll(listQuery(org, { limit: 2, ...fields }))).map((k) => k.id);
        expect(await ids({})).toEqual([revoked.id, a2.id, b1.id, a1.id]);
        expect(await ids({ showRevoked: false })).toEqual([a2.id, b1.id, a1.id]);
        expect(await ids({ projectId: "p1" })).toEqual([revoked.id, b1.id, a1.id]);
        expect(await ids({ createdBy: "u_a" })).toEqual([revoked.id, a2.id, a1.id]);
        expect(await ids({ projectId: "p1", createdBy: "u_a", showRevoked: false })).toEqual([a1.id]);
        expect(await ids({ projectId: "p3" })).toEqual([]);
      });

      it("lists nothing for an organization without keys", async () => {
        expect(await store.listKeys(listQuery(uid("org")))).toEqual({ items: [], next: null });
      });
    });

    describe("findByHash", () => {
      it("finds nothing for an unknown hash", async () => {
        expect(await store.findByHash(secretHash())).toBeNull();
      });

      it("finds a revoked key, revoked", async () => {
        const org = uid("org");
        const { input, key } = await create(org);
        await store.revokeKey({ organizationId: org, keyId: key.id, revokedBy: "u_admin", reason: "leaked", now: T0 + MINUTE, audit: auditRecord(org, "key.revoke"), permission: ALLOW });
        const found = await store.findByHash(input.hash);
        expect(found!.key.id).toBe(key.id);
        expect(found!.key.revokeTime).toBe(T0 + MINUTE);
      });
    });

    describe("replaceSecretHash", () => {
      it("moves a secret to a new hash, keeping its key and grace deadline, once", async () => {
        const org = uid("org");
        const { input, key } = await create(org);
        const current = secretHash();
        await store.rotateKey({ organizationId: org, keyId: key.id, rotation: { newHash: current, newPreview: "p", oldSecretExpireTime: T0 + 10 * MINUTE }, now: T0, audit: auditRecord(org, "key.rotate") });
        const rehashed = secretHash();
        expect(await store.replaceSecretHash(org, key.id, input.hash, rehashed)).toBe(true);
        expect(await store.findByHash(input.hash)).toBeNull();
        expect(await store.findByHash(rehashed)).toMatchObject({ key: { id: key.id }, secretExpireTime: T0 + 10 * MINUTE });
        // The key's other secret is untouched; a second replacement (another instance, later) finds nothing.
        expect((await store.findByHash(current))!.secretExpireTime).toBeNull();
        expect(await store.replaceSecretHash(org, key.id, input.hash, secretHash())).toBe(false);
      });
    });

    describe("updateKey", () => {
      it("changes only the named fields", async () => {
        const org = uid("org");
        const { key } = await create(org, {
          key: {
            name: "before",
            scopes: ["a:read"],
            expireTime: T0 + 60 * MINUTE,
            metadata: { k: "v" },
            limits: { requestsPerMinute: 1, requestsPerDay: 2, monthlyCredits: 3 },
          },
        });
        const renamed = await store.updateKey({ organizationId: org, keyId: key.id, patch: { name: "after" }, now: T0 + MINUTE, audit: auditRecord(org, "key.update") });
        expect(renamed).toEqual({ ...key, name: "after", updateTime: T0 + MINUTE });

        const changed = await store.updateKey({ organizationId: org, keyId: key.id, patch: { scopes: ["b:write"], metadata: { x: "y" }, limits: { requestsPerMinute: 5, requestsPerDay: 0, monthlyCredits: 0 } }, now: T0 + 2 * MINUTE, audit: auditRecord(org, "key.update") });
        expect(changed).toEqual({
          ...key,
          name: "after",
          scopes: ["b:write"],
          metadata: { x: "y" },
          limits: { requestsPerMinute: 5, requestsPerDay: 0, monthlyCredits: 0 },
          updateTime: T0 + 2 * MINUTE,
        });
        expect(await store.getKey(org, key.id)).toEqual(changed);
      });

      it("clears expiry and limits with null", async () => {
        const org = uid("org");
        const { key } = await create(org, {
          key: { expireTime: T0 + MINUTE, limits: { requestsPerMinute: 1, requestsPerDay: 2, monthlyCredits: 3 } },
        });
        const cleared = await store.updateKey({ organizationId: org, keyId: key.id, patch: { expireTime: null, limits: null }, now: T0 + 1, audit: auditRecord(org, "key.update") });
        expect(cleared!.expireTime).toBeNull();
        expect(cleared!.limits).toBeNull();
        const zero = await store.updateKey({ organizationId: org, keyId: key.id, patch: { expireTime: T0 + 5, limits: { requestsPerMinute: 0, requestsPerDay: 0, monthlyCredits: 0 } }, now: T0 + 2, audit: auditRecord(org, "key.update") });
        expect(zero!.expireTime).toBe(T0 + 5);
        expect(zero!.limits).toBeNull();
        expect(await store.getKey(org, key.id)).toEqual(zero);
      });

      it("does not touch a key of another organization", async () => {
        const org = uid("org");
        const other = uid("org");
        const { key } = await create(org);
        expect(await store.updateKey({ organizationId: other, keyId: key.id, patch: { name: "hijacked" }, now: T0 + 1, audit: auditRecord(other, "key.update") })).toBeNull();
        expect(await store.updateKey({ organizationId: org, keyId: uid("key"), patch: { name: "x" }, now: T0 + 1, audit: auditRecord(org, "key.update") })).toBeNull();
        expect(await store.getKey(org, key.id)).toEqual(key);
        expect(await auditEvents(other)).toEqual([]);
        expect(await auditEvents(org)).toHaveLength(1);
      });
    });

    describe("rotateKey", () => {
      it("keeps the old secret working until the grace deadline", async () => {
        const org = uid("org");
        const { input, key } = await create(org);
        const now = T0 + MINUTE;
        const graceEnd = now + 60 * MINUTE;
        const newHash = secretHash();
        const rotated = await store.rotateKey({ organizationId: org, keyId: key.id, rotation: { newHash, newPreview: "sk_new…abcd", oldSecretExpireTime: graceEnd }, now, audit: auditRecord(org, "key.rotate") });
        expect(rotated).toEqual({
          ...key,
          preview: "sk_new…abcd",
          rotateTime: now,
          previousSecretExpireTime: graceEnd,
          updateTime: now,
        });
        const old = await store.findByHash(input.hash);
        const current = await store.findByHash(newHash);
        expect(old).toEqual({ key: rotated, secretExpireTime: graceEnd, memberRole: Role.MEMBER, orgEnabled: true });
        expect(current).toEqual({ key: rotated, secretExpireTime: null, memberRole: Role.MEMBER, orgEnabled: true });
      });

      it("never extends an older secret's grace, and may shorten it", async () => {
        const org = uid("org");
        const { input, key } = await create(org);
        const rotate = (now: number, graceEnd: number, hash: Buffer) =>
          store.rotateKey({ organizationId: org, keyId: key.id, rotation: { newHash: hash, newPreview: "p", oldSecretExpireTime: graceEnd }, now, audit: auditRecord(org, "key.rotate") });
        const second = secretHash();
        const third = secretHash();
        const fourth = secretHash();
        await rotate(T0 + 1, T0 + 100 * MINUTE, second);
        // A longer grace for the second secret leaves the first one's deadline alone.
        await rotate(T0 + 2, T0 + 200 * MINUTE, third);
        expect((await store.findByHash(input.hash))!.secretExpireTime).toBe(T0 + 100 * MINUTE);
        expect((await store.findByHash(second))!.secretExpireTime).toBe(T0 + 200 * MINUTE);
        // A shorter one cuts both.
        const last = await rotate(T0 + 3, T0 + 10 * MINUTE, fourth);
        expect((await store.findByHash(input.hash))!.secretExpireTime).toBe(T0 + 10 * MINUTE);
        expect((await store.findByHash(second))!.secretExpireTime).toBe(T0 + 10 * MINUTE);
        expect((await store.findByHash(third))!.secretExpireTime).toBe(T0 + 10 * MINUTE);
        expect((await store.findByHash(fourth))!.secretExpireTime).toBeNull();
        expect(last!.previousSecretExpireTime).toBe(T0 + 10 * MINUTE);
      });

      it("ends the old secrets at once without a grace period", async () => {
        const org = uid("org");
        const { input, key } = await create(org);
        const second = secretHash();
        const third = secretHash();
        const rotation = (newHash: Buffer, graceEnd: number) => ({ newHash, newPreview: "p", oldSecretExpireTime: graceEnd });
        await store.rotateKey({ organizationId: org, keyId: key.id, rotation: rotation(second, T0 + 60 * MINUTE), now: T0 + 1, audit: auditRecord(org, "key.rotate") });
        const rotated = await store.rotateKey({ organizationId: org, keyId: key.id, rotation: rotation(third, T0 + 2), now: T0 + 2, audit: auditRecord(org, "key.rotate") });
        expect(rotated!.previousSecretExpireTime).toBeNull();
        expect(rotated!.rotateTime).toBe(T0 + 2);
        expect(await store.findByHash(input.hash)).toBeNull();
        expect(await store.findByHash(second)).toBeNull();
        expect((await store.findByHash(third))!.secretExpireTime).toBeNull();
      });

      it("does not touch a key of another organization", async () => {
        const org = uid("org");
        const other = uid("org");
        const { input, key } = await create(org);
        const newHash = secretHash();
        const rotated = await store.rotateKey({ organizationId: other, keyId: key.id, rotation: { newHash, newPreview: "p", oldSecretExpireTime: T0 }, now: T0 + 1, audit: auditRecord(other, "key.rotate") });
        expect(rotated).toBeNull();
        expect(await store.findByHash(newHash)).toBeNull();
        expect((await store.findByHash(input.hash))!.secretExpireTime).toBeNull();
        expect(await store.getKey(org, key.id)).toEqual(key);
        expect(await auditEvents(other)).toEqual([]);
      });

      it("never changes a revoked key (rotation or update)", async () => {
        const org = uid("org");
        const { input, key } = await create(org);
        await store.revokeKey({ organizationId: org, keyId: key.id, revokedBy: "u_admin", reason: "", now: T0 + 1, audit: auditRecord(org, "key.revoke"), permission: ALLOW });
        const revoked = await store.getKey(org, key.id);
        const newHash = secretHash();
        const rotation = { newHash, newPreview: "p", oldSecretExpireTime: T0 + 2 };
        expect(await store.rotateKey({ organizationId: org, keyId: key.id, rotation, now: T0 + 2, audit: auditRecord(org, "key.rotate") })).toBeNull();
        expect(await store.updateKey({ organizationId: org, keyId: key.id, patch: { name: "renamed" }, now: T0 + 2, audit: auditRecord(org, "key.update") })).toBeNull();
        expect(await store.findByHash(newHash)).toBeNull();
        expect(await store.findByHash(input.hash)).not.toBeNull();
        expect(await store.getKey(org, key.id)).toEqual(revoked);
        expect((await auditEvents(org)).map((e) => e.action)).not.toContain("key.rotate");
      });
    });

    describe("revokeKey", () => {
      /** A permission as the key service makes it, recording the keys it was asked about. */
      function permission(revocable: Revocable, asked: KeyRecord[] = []): RevokePermission {
        return {
          revocable,
          check: (k) => {
            asked.push(k);
            if (!mayRevokeCreatedBy(revocable, k.createdBy)) throw new Error(`not yours: ${k.createdBy}`);
          },
        };
      }

      it("revokes its own key for an actor who may revoke only its own", async () => {
        const org = uid("org");
        const { key } = await create(org, { key: { createdBy: "u_owner" } });
        const result = await store.revokeKey({ organizationId: org, keyId: key.id, revokedBy: "u_owner", reason: "", now: T0 + 1, audit: auditRecord(org, "key.revoke"), permission: permission({ kind: "own", userId: "u_owner" }) });
        expect(result).toMatchObject({ changed: true, key: { id: key.id, revokeTime: T0 + 1, revokedBy: "u_owner" } });
        expect((await auditEvents(org)).map((e) => e.action)).toEqual(["key.revoke", "key.create"]);
      });

      for (const [name, revocable] of [
        ["only its own", { kind: "own", userId: "u_other" }],
        ["none", { kind: "none" }],
      ] as const) {
        it(`refuses another's key (actor may revoke ${name}) with the check's error, asked about the stored key; nothing changes`, async () => {
          const org = uid("org");
          const { key } = await create(org, { key: { createdBy: "u_owner" } });
          const asked: KeyRecord[] = [];
          const attempt = store.revokeKey({ organizationId: org, keyId: key.id, revokedBy: "u_other", reason: "", now: T0 + 1, audit: auditRecord(org, "key.revoke"), permission: permission(revocable, asked) });
          await expect(attempt).rejects.toThrow("not yours: u_owner");
          expect(asked).toEqual([key]);
          expect(await store.getKey(org, key.id)).toEqual(key);
          expect((await auditEvents(org)).map((e) => e.action)).toEqual(["key.create"]);
        });
      }

      it("refuses a revoked key to an actor who may not revoke it, rather than answering unchanged", async () => {
        const org = uid("org");
        const { key } = await create(org, { key: { createdBy: "u_owner" } });
        await store.revokeKey({ organizationId: org, keyId: key.id, revokedBy: "u_admin", reason: "", now: T0 + 1, audit: auditRecord(org, "key.revoke"), permission: ALLOW });
        const attempt = store.revokeKey({ organizationId: org, keyId: key.id, revokedBy: "u_other", reason: "", now: T0 + 2, audit: auditRecord(org, "key.revoke"), permission: permission({ kind: "own", userId: "u_other" }) });
        await expect(attempt).rejects.toThrow("not yours: u_owner");
        expect((await auditEvents(org)).map((e) => e.action)).toEqual(["key.revoke", "key.create"]);
      });

      it("revokes once; a second revoke returns the key unchanged", async () => {
        const org = uid("org");
        const { key } = await create(org);
        const first = await store.revokeKey({ organizationId: org, keyId: key.id, revokedBy: "u_admin", reason: "leaked", now: T0 + MINUTE, audit: auditRecord(org, "key.revoke"), permission: ALLOW });
        const revoked = { ...key, revokeTime: T0 + MINUTE, revokedBy: "u_admin", revokeReason: "leaked", updateTime: T0 + MINUTE };
        expect(first).toEqual({ key: revoked, changed: true });
        const second = await store.revokeKey({ organizationId: org, keyId: key.id, revokedBy: "u_other", reason: "again", now: T0 + 2 * MINUTE, audit: auditRecord(org, "key.revoke"), permission: ALLOW });
        expect(second).toEqual({ key: revoked, changed: false });
        expect(await store.getKey(org, key.id)).toEqual(revoked);
        expect((await auditEvents(org)).map((e) => e.action)).toEqual(["key.revoke", "key.create"]);
      });

      it("does not touch a key of another organization", async () => {
        const org = uid("org");
        const other = uid("org");
        const { key } = await create(org);
        expect(await store.revokeKey({ organizationId: other, keyId: key.id, revokedBy: "u_admin", reason: "", now: T0 + 1, audit: auditRecord(other, "key.revoke"), permission: ALLOW })).toBeNull();
        expect(await store.revokeKey({ organizationId: org, keyId: uid("key"), revokedBy: "u_admin", reason: "", now: T0 + 1, audit: auditRecord(org, "key.revoke"), permission: ALLOW })).toBeNull();
        expect((await store.getKey(org, key.id))!.revokeTime).toBeNull();
        expect(await auditEvents(other)).toEqual([]);
      });
    });

    describe("revokeKeysCreatedBy", () => {
      it("revokes the creator's unrevoked keys in the organization only", async () => {
        const org = uid("org");
        const other = uid("org");
        const a1 = (await create(org, { key: { createdBy: "u_a" } })).key;
        const a2 = (await create(org, { key: { createdBy: "u_a" } })).key;
        const already = (await create(org, { key: { createdBy: "u_a" } })).key;
        const b = (await create(org, { key: { createdBy: "u_b" } })).key;
        const elsewhere = (await create(other, { key: { createdBy: "u_a" } })).key;
        await store.revokeKey({ organizationId: org, keyId: already.id, revokedBy: "u_a", reason: "", now: T0 + 1, audit: auditRecord(org, "key.revoke"), permission: ALLOW });

        const changed = await store.revokeKeysCreatedBy({ organizationId: org, createdBy: "u_a", revokedBy: "u_admin", reason: "left", now: T0 + 2, audit: auditRecord(org, "key.revoke_all") });
        expect([...changed.keyIds].sort()).toEqual([a1.id, a2.id].sort());
        for (const id of [a1.id, a2.id]) {
          const key = await store.getKey(org, id);
          expect([key!.revokeTime, key!.revokedBy, key!.revokeReason, key!.updateTime]).toEqual([T0 + 2, "u_admin", "left", T0 + 2]);
        }
        expect((await store.getKey(org, already.id))!.revokeTime).toBe(T0 + 1);
        expect((await store.getKey(org, b.id))!.revokeTime).toBeNull();
        expect((await store.getKey(other, elsewhere.id))!.revokeTime).toBeNull();
        expect((await auditEvents(org))[0].action).toBe("key.revoke_all");

        const again = await store.revokeKeysCreatedBy({ organizationId: org, createdBy: "u_a", revokedBy: "u_admin", reason: "", now: T0 + 3, audit: auditRecord(org, "key.revoke_all") });
        expect(again.keyIds).toEqual([]);
      });
    });

    describe("members and organizations", () => {
      it("sets a member's role", async () => {
        const org = uid("org");
        const { input } = await create(org, { key: { createdBy: "u_a" }, enrollRole: Role.MEMBER });
        const member = await store.setMemberRole({ organizationId: org, userId: "u_a", role: Role.VIEWER, now: T0 + 1, audit: auditRecord(org, "member.set_role") });
        expect(member).toEqual({ organizationId: org, userId: "u_a", role: Role.VIEWER, updateTime: T0 + 1 });
        expect((await store.findByHash(input.hash))!.memberRole).toBe(Role.VIEWER);
        // A role for someone who was never a member is an insert.
        expect(await store.setMemberRole({ organizationId: org, userId: "u_new", role: Role.OWNER, now: T0 + 2, audit: auditRecord(org, "member.set_role") })).toEqual({
          organizationId: org,
          userId: "u_new",
          role: Role.OWNER,
          updateTime: T0 + 2,
        });
      });

      it("removes a member, keeping their keys", async () => {
        const org = uid("org");
        const { input, key } = await create(org, { key: { createdBy: "u_a" } });
        const changed = await store.removeMember({ organizationId: org, userId: "u_a", revokeKeys: false, now: T0 + 1, audit: auditRecord(org, "member.remove") });
        expect(changed.keyIds).toEqual([]);
        const found = await store.findByHash(input.hash);
        expect(found!.memberRole).toBeNull();
        expect(found!.key).toEqual(key);
        // Idempotent.
        expect(await store.removeMember({ organizationId: org, userId: "u_a", revokeKeys: false, now: T0 + 2, audit: auditRecord(org, "member.remove") })).toEqual({ keyIds: [] });
      });

      it("removes a member and revokes their keys", async () => {
        const org = uid("org");
        const { input, key } = await create(org, { key: { createdBy: "u_a" } });
        const other = (await create(org, { key: { createdBy: "u_b" } })).key;
        const changed = await store.removeMember({ organizationId: org, userId: "u_a", revokeKeys: true, now: T0 + 1, audit: auditRecord(org, "member.remove", { actorUserId: "u_owner" }) });
        expect(changed.keyIds).toEqual([key.id]);
        const found = await store.findByHash(input.hash);
        expect(found!.memberRole).toBeNull();
        expect(found!.key).toEqual({ ...key, revokeTime: T0 + 1, revokedBy: "u_owner", revokeReason: "member removed", updateTime: T0 + 1 });
        expect((await store.getKey(org, other.id))!.revokeTime).toBeNull();
      });

      it("switches an organization's API access", async () => {
        const org = uid("org");
        const { input } = await create(org);
        expect(await store.setApiAccess({ organizationId: org, enabled: false, now: T0 + 1, audit: auditRecord(org, "org.disable_api") })).toEqual({
          id: org,
          apiAccessEnabled: false,
          updateTime: T0 + 1,
        });
        expect((await store.findByHash(input.hash))!.orgEnabled).toBe(false);
        await store.setApiAccess({ organizationId: org, enabled: true, now: T0 + 2, audit: auditRecord(org, "org.enable_api") });
        expect((await store.findByHash(input.hash))!.orgEnabled).toBe(true);
        const fresh = uid("org");
        expect(await store.setApiAccess({ organizationId: fresh, enabled: false, now: T0, audit: auditRecord(fresh, "org.disable_api") })).toEqual({
          id: fresh,
          apiAccessEnabled: false,
          updateTime: T0,
        });
      });
    });

    describe("touchLastUsed", () => {
      it("records a batch, never moving a time backwards", async () => {
        const org = uid("org");
        const a = (await create(org)).key;
        const b = (await create(org)).key;
        const c = (await create(org)).key;
        const other = uid("org");
        const d = (await create(other)).key;
        await store.touchLastUsed(
          new Map([
            [
              org,
              new Map([
                [a.id, T0 + 10],
                [b.id, T0 + 20],
                [uid("key"), T0 + 30],
                // Named under the wrong organization: not touched.
                [d.id, T0 + 40],
              ]),
            ],
          ]),
        );
        await store.touchLastUsed(
          new Map([
            [
              org,
              new Map([
                [a.id, T0 + 5],
                [b.id, T0 + 25],
              ]),
            ],
            [other, new Map([[d.id, T0 + 50]])],
          ]),
        );
        await store.touchLastUsed(new Map());
        expect((await store.getKey(org, a.id))!.lastUsedTime).toBe(T0 + 10);
        expect((await store.getKey(org, b.id))!.lastUsedTime).toBe(T0 + 25);
        expect((await store.getKey(org, c.id))!.lastUsedTime).toBeNull();
        expect((await store.getKey(other, d.id))!.lastUsedTime).toBe(T0 + 50);
        // Not a management action: no audit event, no update time.
        expect((await store.getKey(org, b.id))!.updateTime).toBe(b.updateTime);
        expect(await auditEvents(org)).toHaveLength(3);
      });

      it("records batches larger than one statement's worth (MySQL writes them in chunks)", async () => {
        const org = uid("org");
        const keys = await Promise.all(Array.from({ length: 5 }, () => create(org)));
        // 2,500 entries: unknown ids around the real keys, which sit in the first, middle and last chunk.
        const times = new Map<string, number>();
        for (let i = 0; i < 2500; i++) times.set(uid("gone"), T0);
        const positions = [0, 999, 1000, 1700, 2499];
        const entries = [...times];
        positions.forEach((p, i) => entries.splice(p, 0, [keys[i].key.id, T0 + 100 + i]));
        await store.touchLastUsed(new Map([[org, new Map(entries)]]));
        for (const [i, { key }] of keys.entries()) expect((await store.getKey(org, key.id))!.lastUsedTime).toBe(T0 + 100 + i);
      });
    });

    describe("audit events", () => {
      it("records every mutation with the change, newest first", async () => {
        const org = uid("org");
        const { input, key } = await create(org, { key: { createdBy: "u_a" } });
        const events = [input.audit];
        const next = (action: string, fields: Partial<AuditRecord> = {}) => {
          const event = auditRecord(org, action, { time: T0 + events.length, ...fields });
          events.push(event);
          return event;
        };
        await store.updateKey({ organizationId: org, keyId: key.id, patch: { name: "n" }, now: T0, audit: next("key.update", { keyId: key.id, details: { fields: "name" } }) });
        await store.rotateKey({ organizationId: org, keyId: key.id, rotation: { newHash: secretHash(), newPreview: "p", oldSecretExpireTime: T0 }, now: T0, audit: next("key.rotate", { actorRole: Role.OWNER, caller: "cli" }) });
        await store.setMemberRole({ organizationId: org, userId: "u_b", role: Role.ADMIN, now: T0, audit: next("member.set_role") });
        await store.setApiAccess({ organizationId: org, enabled: false, now: T0, audit: next("org.disable_api", { actorUserId: "" }) });
        await store.revokeKeysCreatedBy({ organizationId: org, createdBy: "u_b", revokedBy: "u_admin", reason: "", now: T0, audit: next("key.revoke_all") });
        await store.revokeKey({ organizationId: org, keyId: key.id, revokedBy: "u_admin", reason: "", now: T0, audit: next("key.revoke", { details: { reason: "ünïcode ✓" } }), permission: ALLOW });
        await store.removeMember({ organizationId: org, userId: "u_a", revokeKeys: true, now: T0, audit: next("member.remove") });
        expect(await auditEvents(org)).toEqual([...events].reverse());
        expect(await auditEvents(uid("org"))).toEqual([]);
      });

      it("pages with the position of the last event", async () => {
        const org = uid("org");
        for (let i = 0; i < 4; i++) await store.setMemberRole({ organizationId: org, userId: `u_${i}`, role: Role.MEMBER, now: T0, audit: auditRecord(org, `a${i}`) });
        const first = await store.listAuditEvents({ organizationId: org, after: null, limit: 2 });
        expect(first.items.map((e) => e.action)).toEqual(["a3", "a2"]);
        const second = await store.listAuditEvents({ organizationId: org, after: first.next, limit: 2 });
        expect(second.items.map((e) => e.action)).toEqual(["a1", "a0"]);
        expect(second.next).toBeNull();
      });
    });

    describe("invalidation outbox", () => {
      // Older than every other test's rows, so that the oldest-first poll finds these first.
      const LONG_AGO = T0 - 365 * 24 * 60 * MINUTE;

      async function pending(orgs: string[]) {
        return (await store.pendingInvalidations(T0, 1000)).filter((e) => orgs.includes(e.organizationId));
      }

      it("holds each change's invalidation, written with it, under its audit id, until deleted", async () => {
        const org = uid("org");
        const { key } = await create(org);
        const at = (i: number) => auditRecord(org, "change", { time: LONG_AGO + i });
        const audits = [at(1), at(2), at(3), at(4), at(5), at(7)];
        const keys = { kind: "keys" as const, keyIds: [key.id] };
        const member = { kind: "member" as const, organizationId: org, userId: key.createdBy };
        const orgWide = { kind: "org" as const, organizationId: org };
        const base = { organizationId: org, now: LONG_AGO };
        await store.updateKey({ ...base, keyId: key.id, patch: { name: "n" }, audit: audits[0], invalidation: keys });
        await store.rotateKey({
          ...base,
          keyId: key.id,
          rotation: { newHash: secretHash(), newPreview: "p", oldSecretExpireTime: LONG_AGO + MINUTE },
          audit: audits[1],
          invalidation: keys,
        });
        await store.setMemberRole({ ...base, userId: key.createdBy, role: Role.ADMIN, audit: audits[2], invalidation: member });
        await store.setApiAccess({ ...base, enabled: false, audit: audits[3], invalidation: orgWide });
        await store.revokeKey({ ...base, keyId: key.id, revokedBy: "u_r", reason: "", audit: audits[4], permission: ALLOW, invalidation: keys });
        // Again: it changes nothing, so it writes no row (the first revoke's row stays until announced).
        await store.revokeKey({ ...base, keyId: key.id, revokedBy: "u_r", reason: "", audit: at(10), permission: ALLOW, invalidation: keys });
        // Refused: no row either.
        const refused: RevokePermission = { revocable: { kind: "none" }, check: () => { throw new Error("refused"); } };
        const other = (await create(org)).key;
        await expect(store.revokeKey({ ...base, keyId: other.id, revokedBy: "u_r", reason: "", audit: at(11), permission: refused, invalidation: { kind: "keys", keyIds: [other.id] } })).rejects.toThrow("refused");
        await store.removeMember({ ...base, userId: key.createdBy, revokeKeys: true, audit: audits[5], invalidation: member });
        // Changes without an invalidation, or that change nothing, leave no row.
        await store.setMemberRole({ ...base, userId: "u_other", role: Role.VIEWER, audit: at(8) });
        expect(await store.updateKey({ ...base, keyId: "key_missing", patch: { name: "n" }, audit: at(9), invalidation: keys })).toBeNull();

        const rows = await pending([org]);
        expect(rows).toEqual(
          [keys, keys, member, orgWide, keys, member].map((invalidation, i) => ({
            organizationId: org,
            id: audits[i].id,
            createTime: audits[i].time,
            invalidation,
          })),
        );
        await store.deleteInvalidations([rows[0], rows[3], { organizationId: org, id: "evt_unknown" }]);
        expect((await pending([org])).map((r) => r.id)).toEqual([1, 2, 4, 5].map((i) => audits[i].id));
      });

      it("lists only rows made before the given time, oldest first, at most `limit`; deletes across organizations", async () => {
        const [a, b] = [uid("org"), uid("org")];
        const invalidation = (org: string) => ({ kind: "org" as const, organizationId: org });
        for (const [org, offset] of [[a, 3], [b, 1], [a, 2], [b, 50]] as const) {
          await store.setApiAccess({ organizationId: org, enabled: true, now: LONG_AGO, audit: auditRecord(org, "x", { time: LONG_AGO + offset }), invalidation: invalidation(org) });
        }
        const before = (await store.pendingInvalidations(LONG_AGO + 50, 1000)).filter((e) => [a, b].includes(e.organizationId));
        expect(before.map((e) => [e.organizationId, e.createTime - LONG_AGO])).toEqual([
          [b, 1],
          [a, 2],
          [a, 3],
        ]);
        expect((await store.pendingInvalidations(LONG_AGO + 50, 2)).length).toBeLessThanOrEqual(2);
        await store.deleteInvalidations(await pending([a, b]));
        expect(await pending([a, b])).toEqual([]);
      });
    });

    describe("isolation of records", () => {
      it("never hands out or keeps the caller's objects", async () => {
        const org = uid("org");
        const input = newKey(org, { key: { scopes: ["a:read"], metadata: { k: "v" }, limits: { requestsPerMinute: 1, requestsPerDay: 1, monthlyCredits: 1 } } });
        const snapshot = structuredClone(input.key);
        const { key } = await store.createKey(input);
        input.key.scopes.push("mutated");
        input.key.metadata.k = "mutated";
        key.scopes.push("mutated");
        key.limits!.requestsPerMinute = 99;
        (await store.getKey(org, snapshot.id))!.metadata.k = "mutated";
        (await store.listKeys(listQuery(org))).items[0].scopes.length = 0;
        (await store.findByHash(input.hash))!.key.name = "mutated";
        expect(await store.getKey(org, snapshot.id)).toEqual(snapshot);

        const audit = auditRecord(org, "member.set_role", { details: { role: "1" } });
        await store.setMemberRole({ organizationId: org, userId: "u_x", role: Role.VIEWER, now: T0, audit });
        audit.details.role = "mutated";
        (await store.listAuditEvents({ organizationId: org, after: null, limit: 10 })).items[0].details.role = "mutated";
        expect((await store.listAuditEvents({ organizationId: org, after: null, limit: 10 })).items[0].details).toEqual({ role: "1" });
      });
    });
  });
}
