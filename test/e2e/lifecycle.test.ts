// A key's life after creation, end to end on MariaDB + Redis: UpdateKey with a
// field mask, RotateKey with a grace period (on an injected clock), bulk
// RevokeKeys, switching an organization's API access, scopes with wildcards,
// and the audit trail that records all of it.
import { timestampFromMs, timestampMs } from "@bufbuild/protobuf/wkt";
import { Code } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { type ApiKey, type AuditEvent, KeyState, Role, VerifyCode } from "../../gen/apikeys/v1/apikeys_pb.js";
import { type TestServer, startServer } from "../helpers/server.js";
import { expectDenied, expectError, verifyCached } from "./products/product-checks.js";

const CALLER_TOKEN = "lifecycle-web-caller-token-0123456789";
const owner = { userId: "u_owner", role: Role.OWNER };
const admin = { userId: "u_admin", role: Role.ADMIN };
const member = { userId: "u_member", role: Role.MEMBER };
const viewer = { userId: "u_viewer", role: Role.VIEWER };
const MINUTE = 60_000;

describe("key lifecycle (MariaDB + Redis, injected clock)", () => {
  let s: TestServer;
  let clock = Date.now();

  beforeAll(async () => {
    s = await startServer({
      now: () => clock,
      env: {
        // A named caller, so that the audit trail can show who called.
        CALLERS: JSON.stringify([{ name: "web", token: CALLER_TOKEN, allow: ["manage", "verify", "admin"] }]),
        TEST_CALLER_TOKEN: CALLER_TOKEN,
      },
    });
  });
  afterAll(async () => {
    await s?.stop();
  });

  let orgSeq = 0;
  /** A fresh organization per test, so tests never see each other's keys or events. */
  const newOrg = () => `org_life_${++orgSeq}`;

  async function createKey(organizationId: string, actor = owner, fields: { scopes?: string[]; name?: string } = {}) {
    const res = await s.connect.createKey({ organizationId, actor, name: fields.name ?? "k", scopes: fields.scopes ?? [] });
    return { key: res.key!, secret: res.secret };
  }
  const verify = (key: string, requiredScopes: string[] = []) => s.connect.verifyKey({ key, requiredScopes });
  const getKey = async (organizationId: string, keyId: string): Promise<ApiKey> =>
    (await s.connect.getKey({ organizationId, keyId, actor: owner })).key!;

  describe("UpdateKey", () => {
    it("changes exactly the fields named in the mask, one path at a time", async () => {
      const org = newOrg();
      const { key } = await s.connect
        .createKey({ organizationId: org, actor: owner, name: "before", scopes: ["documents:read"], metadata: { tier: "free" } })
        .then((r) => ({ key: r.key! }));
      const update = (paths: string[], fields: Record<string, unknown>) =>
        s.connect.updateKey({ organizationId: org, keyId: key.id, actor: owner, updateMask: { paths }, ...fields }).then((r) => r.key!);
      // Every request also carries a value for a field it does not name: only the named one may change.
      const decoy = { name: "decoy", scopes: ["decoy:x"], metadata: { decoy: "x" }, limits: { requestsPerMinute: 7 } };

      clock += 1000;
      let k = await update(["name"], { ...decoy, name: "after" });
      expect(k).toMatchObject({ name: "after", scopes: ["documents:read"], metadata: { tier: "free" } });
      expect(k.limits).toBeUndefined();
      expect(timestampMs(k.updateTime!)).toBe(clock);

      k = await update(["scopes"], { ...decoy, scopes: ["documents:read", "documents:write"] });
      expect(k).toMatchObject({ name: "after", scopes: ["documents:read", "documents:write"], metadata: { tier: "free" } });

      k = await update(["metadata"], { ...decoy, metadata: { tier: "pro", team: "search" } });
      expect(k.metadata).toEqual({ tier: "pro", team: "search" });
      expect(k.name).toBe("after");

      const expireAt = clock + 60 * MINUTE;
      k = await update(["expire_time"], { ...decoy, expireTime: timestampFromMs(expireAt) });
      expect(timestampMs(k.expireTime!)).toBe(expireAt);
      k = await update(["expire_time"], decoy);
      expect(k.expireTime).toBeUndefined();

      k = await update(["limits"], { ...decoy, limits: { requestsPerMinute: 100, requestsPerDay: 1000, monthlyCredits: 5000n } });
      expect(k.limits).toMatchObject({ requestsPerMinute: 100, requestsPerDay: 1000, monthlyCredits: 5000n });
      k = await update(["limits"], { name: "decoy" });
      expect(k.limits).toBeUndefined();

      k = await update(["name", "metadata"], { ...decoy, name: "both", metadata: {} });
      expect(k).toMatchObject({ name: "both", metadata: {}, scopes: ["documents:read", "documents:write"] });
      expect(await getKey(org, key.id)).toEqual(k);
    });

    it("rejects a missing mask or an unknown path, and changes nothing", async () => {
      const org = newOrg();
      const { key } = await createKey(org);
      for (const paths of [[], ["name", "secret"], ["created_by"], ["state"]]) {
        await expectError(
          s.connect.updateKey({ organizationId: org, keyId: key.id, actor: owner, updateMask: { paths }, name: "changed" }),
          Code.InvalidArgument,
          "INVALID_ARGUMENT",
          /^update_mask:/,
        );
      }
      await expectError(
        s.connect.updateKey({ organizationId: org, keyId: key.id, actor: owner, name: "no mask" }),
        Code.InvalidArgument,
        "INVALID_ARGUMENT",
        /^update_mask:/,
      );
      expect(await getKey(org, key.id)).toEqual(key);
    });

    it("refuses to change a revoked key (FAILED_PRECONDITION)", async () => {
      const org = newOrg();
      const { key } = await createKey(org);
      await s.connect.revokeKey({ organizationId: org, keyId: key.id, actor: owner });
      await expectError(
        s.connect.updateKey({ organizationId: org, keyId: key.id, actor: owner, updateMask: { paths: ["name"] }, name: "revived?" }),
        Code.FailedPrecondition,
        "KEY_REVOKED",
      );
      expect((await getKey(org, key.id)).name).toBe("k");
    });

    it("lets a member update only their own keys (the revoke rules apply)", async () => {
      const org = newOrg();
      const theirs = await createKey(org, admin);
      const mine = await createKey(org, member);
      const rename = (keyId: string) => s.connect.updateKey({ organizationId: org, keyId, actor: member, updateMask: { paths: ["name"] }, name: "renamed" });
      await expectDenied(rename(theirs.key.id), "revoke_any");
      expect((await rename(mine.key.id)).key?.name).toBe("renamed");
    });

    it("is seen by VerifyKey at once: a removed scope, an expiry in the past, new limits", async () => {
      const org = newOrg();
      const { key, secret } = await createKey(org, owner, { scopes: ["documents:read", "documents:write"] });
      expect((await verifyCached(s, secret, ["documents:write"])).code).toBe(VerifyCode.VALID);
      await s.connect.updateKey({ organizationId: org, keyId: key.id, actor: owner, updateMask: { paths: ["scopes"] }, scopes: ["documents:read"] });
      expect((await verify(secret, ["documents:write"])).code).toBe(VerifyCode.INSUFFICIENT_SCOPE);
      expect((await verify(secret, ["documents:read"])).code).toBe(VerifyCode.VALID);

      await verifyCached(s, secret);
      await s.connect.updateKey({ organizationId: org, keyId: key.id, actor: owner, updateMask: { paths: ["expire_time"] }, expireTime: timestampFromMs(clock - 1) });
      const expired = await verify(secret);
      expect(expired.code).toBe(VerifyCode.EXPIRED);
      expect(expired.key?.state).toBe(KeyState.EXPIRED);
      await s.connect.updateKey({ organizationId: org, keyId: key.id, actor: owner, updateMask: { paths: ["expire_time"] } });
      expect((await verify(secret)).code).toBe(VerifyCode.VALID);

      await verifyCached(s, secret);
      await s.connect.updateKey({ organizationId: org, keyId: key.id, actor: owner, updateMask: { paths: ["limits"] }, limits: { requestsPerMinute: 1 } });
      expect((await verify(secret)).code).toBe(VerifyCode.VALID);
      const limited = await verify(secret);
      expect(limited.code).toBe(VerifyCode.RATE_LIMITED);
      expect(limited.rateLimit).toMatchObject({ limit: 1, remaining: 0 });
      await s.connect.updateKey({ organizationId: org, keyId: key.id, actor: owner, updateMask: { paths: ["limits"] } });
      expect((await verify(secret)).code).toBe(VerifyCode.VALID);
    });
  });

  describe("RotateKey", () => {
    it("issues a new secret; the old one works until the grace deadline, then is EXPIRED", async () => {
      const org = newOrg();
      const { key, secret: old } = await createKey(org);
      expect((await verifyCached(s, old)).valid).toBe(true);
      const rotatedAt = clock;
      const res = await s.connect.rotateKey({ organizationId: org, keyId: key.id, actor: owner, gracePeriod: { seconds: 60n } });
      expect(res.secret).toMatch(/^sk_[0-9A-Za-z]{38}$/);
      expect(res.secret).not.toBe(old);
      expect(res.key?.preview).toBe(`${res.secret.slice(0, -34)}…${res.secret.slice(-4)}`);

      const got = await getKey(org, key.id);
      expect(timestampMs(got.rotateTime!)).toBe(rotatedAt);
      expect(timestampMs(got.previousSecretExpireTime!)).toBe(rotatedAt + MINUTE);
      expect(got).toMatchObject({ id: key.id, name: key.name, state: KeyState.ACTIVE });

      expect((await verify(res.secret)).code).toBe(VerifyCode.VALID);
      expect((await verify(old)).code).toBe(VerifyCode.VALID);
      clock = rotatedAt + MINUTE - 1;
      expect((await verify(old)).code).toBe(VerifyCode.VALID);
      clock = rotatedAt + MINUTE;
      const after = await verify(old);
      expect(after).toMatchObject({ valid: false, code: VerifyCode.EXPIRED });
      expect(after.key?.id).toBe(key.id);
      expect((await verify(res.secret)).code).toBe(VerifyCode.VALID);
      expect((await getKey(org, key.id)).previousSecretExpireTime).toBeUndefined();
    });

    it("without a grace period, the old secret stops at once", async () => {
      const org = newOrg();
      const { key, secret: old } = await createKey(org);
      expect((await verifyCached(s, old)).valid).toBe(true);
      const res = await s.connect.rotateKey({ organizationId: org, keyId: key.id, actor: owner });
      // The old secret is gone from the store, so nothing is left to recognise it by.
      expect(await verify(old)).toMatchObject({ valid: false, code: VerifyCode.NOT_FOUND });
      expect((await verify(res.secret)).code).toBe(VerifyCode.VALID);
      const got = await getKey(org, key.id);
      expect(timestampMs(got.rotateTime!)).toBe(clock);
      expect(got.previousSecretExpireTime).toBeUndefined();
    });

    it("refuses a revoked key and a grace period over 30 days", async () => {
      const org = newOrg();
      const { key } = await createKey(org);
      await expectError(
        s.connect.rotateKey({ organizationId: org, keyId: key.id, actor: owner, gracePeriod: { seconds: BigInt(31 * 24 * 3600) } }),
        Code.InvalidArgument,
        "INVALID_ARGUMENT",
        /^grace_period:/,
      );
      await s.connect.revokeKey({ organizationId: org, keyId: key.id, actor: owner });
      await expectError(s.connect.rotateKey({ organizationId: org, keyId: key.id, actor: owner }), Code.FailedPrecondition, "KEY_REVOKED");
    });
  });

  describe("RevokeKeys", () => {
    it("revokes every active key one user created in the organization, and only those; again revokes 0", async () => {
      const org = newOrg();
      const leaver = { userId: "u_leaver", role: Role.MEMBER };
      const k1 = await createKey(org, leaver);
      const k2 = await createKey(org, leaver);
      const earlier = await createKey(org, leaver);
      await s.connect.revokeKey({ organizationId: org, keyId: earlier.key.id, actor: leaver });
      const stays = await createKey(org, member);
      const elsewhere = await createKey(newOrg(), leaver);
      await verifyCached(s, k1.secret);

      const res = await s.connect.revokeKeys({ organizationId: org, actor: admin, createdBy: leaver.userId, reason: "offboarding" });
      expect(res.revokedCount).toBe(2);
      for (const k of [k1, k2]) {
        expect((await verify(k.secret)).code).toBe(VerifyCode.REVOKED);
        expect(await getKey(org, k.key.id)).toMatchObject({ state: KeyState.REVOKED, revokedBy: admin.userId, revokeReason: "offboarding" });
      }
      for (const k of [stays, elsewhere]) expect((await verify(k.secret)).code).toBe(VerifyCode.VALID);

      expect((await s.connect.revokeKeys({ organizationId: org, actor: admin, createdBy: leaver.userId })).revokedCount).toBe(0);
    });

    it("lets a member revoke all their own keys, not someone else's", async () => {
      const org = newOrg();
      await createKey(org, member);
      await createKey(org, admin);
      await expectDenied(s.connect.revokeKeys({ organizationId: org, actor: member, createdBy: admin.userId }), "revoke_any");
      expect((await s.connect.revokeKeys({ organizationId: org, actor: member, createdBy: member.userId })).revokedCount).toBe(1);
    });
  });

  describe("SetApiAccess", () => {
    it("switched off, the organization's keys verify as DISABLED without being revoked; on, they work again", async () => {
      const org = newOrg();
      const a = await createKey(org);
      const b = await createKey(org, member);
      const other = await createKey(newOrg());
      for (const k of [a, b]) await verifyCached(s, k.secret);

      const off = await s.orgs.setApiAccess({ organizationId: org, enabled: false, actor: owner });
      expect(off.organization).toMatchObject({ id: org, apiAccessEnabled: false });
      for (const k of [a, b]) {
        expect(await verify(k.secret)).toMatchObject({ valid: false, code: VerifyCode.DISABLED });
        expect(await getKey(org, k.key.id)).toMatchObject({ state: KeyState.ACTIVE, revokedBy: "" });
      }
      expect((await verify(other.secret)).code).toBe(VerifyCode.VALID);
      // Creating keys is still possible while access is off (they are DISABLED too).
      const during = await createKey(org);
      expect((await verify(during.secret)).code).toBe(VerifyCode.DISABLED);

      await verifyCached(s, a.secret);
      const on = await s.orgs.setApiAccess({ organizationId: org, enabled: true, actor: owner });
      expect(on.organization?.apiAccessEnabled).toBe(true);
      for (const k of [a, b, during]) expect((await verify(k.secret)).code).toBe(VerifyCode.VALID);
    });
  });

  describe("scopes", () => {
    it("grants with a wildcard such as documents:*, and needs every required scope", async () => {
      const org = newOrg();
      const { secret } = await createKey(org, owner, { scopes: ["documents:*", "billing:read"] });
      const code = async (...required: string[]) => (await verify(secret, required)).code;
      expect(await code("documents:read")).toBe(VerifyCode.VALID);
      expect(await code("documents:delete", "billing:read")).toBe(VerifyCode.VALID);
      expect(await code("documents:*")).toBe(VerifyCode.VALID);
      expect(await code("billing:write")).toBe(VerifyCode.INSUFFICIENT_SCOPE);
      expect(await code("documents:read", "billing:write")).toBe(VerifyCode.INSUFFICIENT_SCOPE);
      expect(await code("documentsx:read")).toBe(VerifyCode.INSUFFICIENT_SCOPE);
      expect(await code("documents")).toBe(VerifyCode.INSUFFICIENT_SCOPE);

      const narrow = await createKey(org, owner, { scopes: ["documents:read"] });
      expect((await verify(narrow.secret, ["documents:*"])).code).toBe(VerifyCode.INSUFFICIENT_SCOPE);
      const full = await createKey(org, owner, { scopes: [] });
      const res = await verify(full.secret, ["anything:at_all", "documents:write"]);
      expect(res.code).toBe(VerifyCode.VALID);
      expect(res.principal?.scopes).toEqual([]);
    });
  });

  describe("CreateKey and memberships", () => {
    it("announces a membership change only when CreateKey adds the creator; a claimed role never changes a member's", async () => {
      const org = newOrg();
      // Member changes only: every CreateKey also announces its new secret to the instances' membership filters.
      const spy = vi.spyOn(s.app.broadcast!, "invalidate");
      const published = () => spy.mock.calls.filter(([event]) => event.kind === "member").length;
      const creator = { userId: "u_creator", role: Role.MEMBER };

      let before = published();
      const first = await createKey(org, creator);
      expect(published() - before, "a new member").toBe(1);

      before = published();
      await createKey(org, creator);
      await createKey(org, creator);
      expect(published() - before, "the same role again").toBe(0);

      // Another role claimed by CreateKey is not recorded (membership changes only through OrganizationService).
      expect((await verifyCached(s, first.secret)).principal?.role).toBe(Role.MEMBER);
      before = published();
      await createKey(org, { ...creator, role: Role.ADMIN });
      expect(published() - before, "another claimed role").toBe(0);
      expect((await verify(first.secret)).principal?.role).toBe(Role.MEMBER);
      spy.mockRestore();
    });
  });

  describe("audit trail", () => {
    it("records every management action with actor, caller, action and key, newest first, in pages", async () => {
      const org = newOrg();
      const t0 = clock;
      const step = () => (clock += 1000);
      const { key } = await createKey(org, admin);
      step();
      await s.connect.updateKey({ organizationId: org, keyId: key.id, actor: admin, updateMask: { paths: ["name"] }, name: "renamed" });
      step();
      await s.connect.rotateKey({ organizationId: org, keyId: key.id, actor: owner, gracePeriod: { seconds: 10n } });
      step();
      await s.orgs.setMemberRole({ organizationId: org, userId: member.userId, role: Role.ADMIN, actor: owner });
      step();
      await s.orgs.setApiAccess({ organizationId: org, enabled: false, actor: owner });
      step();
      await s.orgs.setApiAccess({ organizationId: org, enabled: true });
      step();
      await s.connect.revokeKey({ organizationId: org, keyId: key.id, actor: admin, reason: "leaked" });
      step();
      await s.connect.revokeKeys({ organizationId: org, actor: owner, createdBy: member.userId });
      step();
      await s.orgs.removeMember({ organizationId: org, userId: member.userId, revokeKeys: true, actor: owner });
      // Refused and repeated calls change nothing and leave no trace.
      await expectDenied(s.connect.revokeKey({ organizationId: org, keyId: key.id, actor: viewer }), "revoke_any");
      await s.connect.revokeKey({ organizationId: org, keyId: key.id, actor: admin });

      const events: AuditEvent[] = [];
      let pageToken = "";
      let pages = 0;
      do {
        const page = await s.orgs.listAuditEvents({ organizationId: org, actor: admin, pageSize: 4, pageToken });
        expect(page.events.length).toBeLessThanOrEqual(4);
        events.push(...page.events);
        pageToken = page.nextPageToken;
        pages++;
      } while (pageToken);
      expect(pages).toBe(3);

      const expected = [
        ["key.create", admin, key.id, {}],
        ["key.update", admin, key.id, { fields: "name" }],
        ["key.rotate", owner, key.id, { grace_seconds: "10" }],
        ["member.set_role", owner, "", { user_id: member.userId, role: "admin" }],
        ["org.disable_api", owner, "", {}],
        ["org.enable_api", undefined, "", {}],
        ["key.revoke", admin, key.id, { reason: "leaked" }],
        ["key.revoke_all", owner, "", { created_by: member.userId }],
        ["member.remove", owner, "", { user_id: member.userId, revoke_keys: "true" }],
      ] as const;
      expect(events.map((e) => e.action)).toEqual(expected.map(([action]) => action).reverse());
      [...expected].reverse().forEach(([action, actor, keyId, details], i) => {
        const e = events[i];
        expect(e, action).toMatchObject({
          organizationId: org,
          caller: "web",
          actorUserId: actor?.userId ?? "",
          actorRole: actor?.role ?? Role.UNSPECIFIED,
          keyId,
          details,
        });
        expect(timestampMs(e.time!), action).toBe(t0 + (expected.length - 1 - i) * 1000);
        expect(e.id).toMatch(/^evt_/);
      });
    });

    it("is refused below view_all, and a page token works only for its own organization", async () => {
      const org = newOrg();
      for (let i = 0; i < 3; i++) await createKey(org);
      await expectDenied(s.orgs.listAuditEvents({ organizationId: org, actor: member }), "view_all");
      const first = await s.orgs.listAuditEvents({ organizationId: org, actor: admin, pageSize: 1 });
      expect(first.nextPageToken).not.toBe("");
      await expectError(
        s.orgs.listAuditEvents({ organizationId: newOrg(), actor: admin, pageSize: 1, pageToken: first.nextPageToken }),
        Code.InvalidArgument,
        "INVALID_ARGUMENT",
        /^page_token:/,
      );
    });
  });
});
