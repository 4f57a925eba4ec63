// Traversal: members create their own keys (trv_ak_…) and see only those;
// admins see and revoke everyone's. A key acts as the member who created it,
// with that member's current role: demoting the member changes what the key
// may do at once.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { KeyState, Role, VerifyCode } from "../../../gen/apikeys/v1/apikeys_pb.js";
import { type TestServer, startServer } from "../../helpers/server.js";
import { concurrentRetriesCreateOne, createShownOnce, expectDenied, verifyCached } from "./product-checks.js";

const POLICY = "create=member,view_all=admin,revoke_any=admin,revoke_own=member";
const ORG = "trv_workspace_1";
const admin = { userId: "trv_admin", role: Role.ADMIN };
const alice = { userId: "trv_alice", role: Role.MEMBER };
const bob = { userId: "trv_bob", role: Role.MEMBER };
const viewer = { userId: "trv_viewer", role: Role.VIEWER };

describe("Traversal (create=member, view_all=admin, revoke_own=member)", () => {
  let s: TestServer;

  beforeAll(async () => {
    s = await startServer({ env: { KEY_POLICY: POLICY, DEFAULT_KEY_PREFIX: "trv_ak" } });
  });
  afterAll(async () => {
    await s?.stop();
  });

  const create = (actor: typeof alice, name: string, scopes: string[] = []) =>
    s.connect.createKey({ organizationId: ORG, actor, name, scopes }).then((r) => ({ key: r.key!, secret: r.secret }));

  it("a member creates a key: the secret is shown once, a retry returns the same key without it", async () => {
    const { key, secret } = await createShownOnce(s, {
      organizationId: ORG,
      actor: alice,
      name: "alice's laptop",
      prefix: "trv_ak",
      scopes: ["documents:read", "documents:write"],
      requestId: "trv-create-1",
    });
    expect(key).toMatchObject({ createdBy: alice.userId, state: KeyState.ACTIVE, prefix: "trv_ak" });
    const res = await s.grpc.call("verifyKey", { key: secret, requiredScopes: ["documents:write"] });
    expect(res).toMatchObject({ valid: true, code: VerifyCode.VALID });

    await concurrentRetriesCreateOne(s, { organizationId: ORG, actor: alice, name: "alice's ci", requestId: "trv-create-2" });
  });

  it("a viewer may not create keys", async () => {
    await expectDenied(s.connect.createKey({ organizationId: ORG, actor: viewer, name: "nope" }), "create");
  });

  it("members see only their own keys; admins see everyone's", async () => {
    const a = await create(alice, "alice list");
    const b = await create(bob, "bob list");

    const alicesView = await s.connect.listKeys({ organizationId: ORG, actor: alice, pageSize: 1000 });
    expect(alicesView.keys.map((k) => k.id)).toContain(a.key.id);
    expect(alicesView.keys.every((k) => k.createdBy === alice.userId)).toBe(true);
    const bobsView = await s.connect.listKeys({ organizationId: ORG, actor: bob, pageSize: 1000 });
    expect(bobsView.keys.map((k) => k.id)).toEqual([b.key.id]);

    await expectDenied(s.connect.listKeys({ organizationId: ORG, actor: alice, createdBy: bob.userId }), "view_all");
    await expectDenied(s.connect.getKey({ organizationId: ORG, actor: alice, keyId: b.key.id }), "view_all");

    const adminsView = await s.connect.listKeys({ organizationId: ORG, actor: admin, pageSize: 1000 });
    expect(adminsView.keys.map((k) => k.id)).toEqual(expect.arrayContaining([a.key.id, b.key.id]));
    const onlyBob = await s.connect.listKeys({ organizationId: ORG, actor: admin, createdBy: bob.userId });
    expect(onlyBob.keys.map((k) => k.id)).toEqual([b.key.id]);
    expect((await s.connect.getKey({ organizationId: ORG, actor: admin, keyId: b.key.id })).key?.name).toBe("bob list");
  });

  it("a key acts as its creator, with the creator's current role, changed at once", async () => {
    const carol = { userId: "trv_carol", role: Role.MEMBER };
    const { secret } = await create(carol, "carol's script");
    const asMember = await verifyCached(s, secret);
    expect(asMember.principal).toMatchObject({ organizationId: ORG, userId: carol.userId, role: Role.MEMBER });

    await s.orgs.setMemberRole({ organizationId: ORG, userId: carol.userId, role: Role.ADMIN, actor: admin });
    expect((await s.grpc.call("verifyKey", { key: secret })).principal?.role).toBe(Role.ADMIN);

    await verifyCached(s, secret);
    await s.orgs.setMemberRole({ organizationId: ORG, userId: carol.userId, role: Role.VIEWER, actor: admin });
    const demoted = await s.grpc.call("verifyKey", { key: secret });
    expect(demoted).toMatchObject({ valid: true, code: VerifyCode.VALID });
    expect(demoted.principal?.role).toBe(Role.VIEWER);
  });

  it("members revoke their own keys but not others'; admins revoke any", async () => {
    const a = await create(alice, "alice revoke");
    const b = await create(bob, "bob revoke");

    await expectDenied(s.connect.revokeKey({ organizationId: ORG, actor: alice, keyId: b.key.id }), "revoke_any");
    await expectDenied(s.connect.revokeKeys({ organizationId: ORG, actor: alice, createdBy: bob.userId }), "revoke_any");
    expect((await s.grpc.call("verifyKey", { key: b.secret })).valid).toBe(true);

    await verifyCached(s, a.secret);
    const own = await s.connect.revokeKey({ organizationId: ORG, actor: alice, keyId: a.key.id, reason: "laptop lost" });
    expect(own.key).toMatchObject({ state: KeyState.REVOKED, revokedBy: alice.userId, revokeReason: "laptop lost" });
    expect((await s.grpc.call("verifyKey", { key: a.secret })).code).toBe(VerifyCode.REVOKED);

    const byAdmin = await s.connect.revokeKey({ organizationId: ORG, actor: admin, keyId: b.key.id });
    expect(byAdmin.key).toMatchObject({ state: KeyState.REVOKED, revokedBy: admin.userId });
    expect((await s.grpc.call("verifyKey", { key: b.secret })).code).toBe(VerifyCode.REVOKED);

    // Revoked keys leave the default listing and stay visible on request.
    const active = await s.connect.listKeys({ organizationId: ORG, actor: alice, pageSize: 1000 });
    expect(active.keys.map((k) => k.id)).not.toContain(a.key.id);
    const all = await s.connect.listKeys({ organizationId: ORG, actor: alice, pageSize: 1000, showRevoked: true });
    expect(all.keys.find((k) => k.id === a.key.id)?.state).toBe(KeyState.REVOKED);
  });
});
