// Keystroke: builders (members) create keys and see only their own; admins see
// and revoke all. Keys act as their builder: removing a builder from the
// workspace suspends their keys at once, re-adding them restores the keys,
// and a removal with revoke_keys ends them for good.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { KeyState, Role, VerifyCode } from "../../../gen/apikeys/v1/apikeys_pb.js";
import { type TestServer, startServer } from "../../helpers/server.js";
import { concurrentRetriesCreateOne, createShownOnce, expectDenied, verifyCached } from "./product-checks.js";

// Keystroke names its member role "builder": configured as an alias, the policy accepts that name.
const POLICY = "create=builder,view_all=admin,revoke_any=admin,revoke_own=builder";
const ORG = "ks_workspace_9";
const admin = { userId: "ks_admin", role: Role.ADMIN };
const builder = { userId: "ks_builder", role: Role.MEMBER };
const other = { userId: "ks_other", role: Role.MEMBER };

describe("Keystroke (builders create and see their own keys; removal suspends)", () => {
  let s: TestServer;

  beforeAll(async () => {
    s = await startServer({ env: { KEY_POLICY: POLICY, ROLE_ALIASES: "builder=member", DEFAULT_KEY_PREFIX: "ks" } });
  });
  afterAll(async () => {
    await s?.stop();
  });

  const create = (actor: typeof admin, name: string) =>
    s.connect.createKey({ organizationId: ORG, actor, name }).then((r) => ({ key: r.key!, secret: r.secret }));

  it("a builder creates a key: the secret is shown once, a retry returns the same key without it", async () => {
    const { key } = await createShownOnce(s, { organizationId: ORG, actor: builder, name: "deploy bot", requestId: "ks-create-1" });
    expect(key).toMatchObject({ createdBy: builder.userId, state: KeyState.ACTIVE, prefix: "ks" });
    await concurrentRetriesCreateOne(s, { organizationId: ORG, actor: builder, name: "preview bot", requestId: "ks-create-2" });
  });

  it("builders see and revoke only their own keys; admins see and revoke all", async () => {
    const mine = await create(builder, "builder's");
    const theirs = await create(other, "other's");

    const buildersView = await s.connect.listKeys({ organizationId: ORG, actor: builder, pageSize: 1000 });
    expect(buildersView.keys.every((k) => k.createdBy === builder.userId)).toBe(true);
    expect(buildersView.keys.map((k) => k.id)).toContain(mine.key.id);
    await expectDenied(s.connect.getKey({ organizationId: ORG, actor: builder, keyId: theirs.key.id }), "view_all");
    await expectDenied(s.connect.revokeKey({ organizationId: ORG, actor: builder, keyId: theirs.key.id }), "revoke_any");

    const adminsView = await s.connect.listKeys({ organizationId: ORG, actor: admin, pageSize: 1000 });
    expect(adminsView.keys.map((k) => k.id)).toEqual(expect.arrayContaining([mine.key.id, theirs.key.id]));

    const own = await s.connect.revokeKey({ organizationId: ORG, actor: builder, keyId: mine.key.id });
    expect(own.key?.state).toBe(KeyState.REVOKED);
    const any = await s.connect.revokeKey({ organizationId: ORG, actor: admin, keyId: theirs.key.id });
    expect(any.key?.state).toBe(KeyState.REVOKED);
    for (const k of [mine, theirs]) expect((await s.grpc.call("verifyKey", { key: k.secret })).code).toBe(VerifyCode.REVOKED);
  });

  it("removing a builder suspends their keys at once, without revoking them; re-adding restores them", async () => {
    const leaver = { userId: "ks_leaver", role: Role.MEMBER };
    const k1 = await create(leaver, "leaver 1");
    const k2 = await create(leaver, "leaver 2");
    const bystander = await create(other, "bystander");
    for (const k of [k1, k2]) expect((await verifyCached(s, k.secret)).valid).toBe(true);

    const removed = await s.orgs.removeMember({ organizationId: ORG, userId: leaver.userId, actor: admin });
    expect(removed.revokedCount).toBe(0);
    for (const k of [k1, k2]) {
      const res = await s.grpc.call("verifyKey", { key: k.secret });
      expect(res).toMatchObject({ valid: false, code: VerifyCode.DISABLED });
      expect(res.principal?.userId).toBe(leaver.userId);
      const got = await s.connect.getKey({ organizationId: ORG, actor: admin, keyId: k.key.id });
      expect(got.key).toMatchObject({ state: KeyState.ACTIVE, revokedBy: "" });
      expect(got.key?.revokeTime).toBeUndefined();
    }
    expect((await s.grpc.call("verifyKey", { key: bystander.secret })).valid).toBe(true);

    await verifyCached(s, k1.secret);
    await s.orgs.setMemberRole({ organizationId: ORG, userId: leaver.userId, role: Role.MEMBER, actor: admin });
    for (const k of [k1, k2]) {
      const res = await s.grpc.call("verifyKey", { key: k.secret });
      expect(res).toMatchObject({ valid: true, code: VerifyCode.VALID });
      expect(res.principal?.role).toBe(Role.MEMBER);
    }
  });

  it("removing a builder with revoke_keys revokes their keys for good", async () => {
    const gone = { userId: "ks_gone", role: Role.MEMBER };
    const k1 = await create(gone, "gone 1");
    const k2 = await create(gone, "gone 2");
    const already = await create(gone, "gone, revoked earlier");
    await s.connect.revokeKey({ organizationId: ORG, actor: gone, keyId: already.key.id });
    await verifyCached(s, k1.secret);

    const removed = await s.orgs.removeMember({ organizationId: ORG, userId: gone.userId, revokeKeys: true, actor: admin });
    expect(removed.revokedCount).toBe(2);
    for (const k of [k1, k2]) {
      expect((await s.grpc.call("verifyKey", { key: k.secret })).code).toBe(VerifyCode.REVOKED);
      const got = await s.connect.getKey({ organizationId: ORG, actor: admin, keyId: k.key.id });
      expect(got.key).toMatchObject({ state: KeyState.REVOKED, revokedBy: admin.userId, revokeReason: "member removed" });
    }

    // Coming back does not bring revoked keys back.
    await s.orgs.setMemberRole({ organizationId: ORG, userId: gone.userId, role: Role.MEMBER, actor: admin });
    expect((await s.grpc.call("verifyKey", { key: k1.secret })).code).toBe(VerifyCode.REVOKED);
  });
});
