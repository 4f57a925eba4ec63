// Petra Security: only admins create and revoke keys; every member sees every
// key of the organization (and its audit trail). A member who tries to revoke
// is refused with PERMISSION_DENIED naming the policy rule.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { KeyState, Role, VerifyCode } from "../../../gen/apikeys/v1/apikeys_pb.js";
import { type TestServer, startServer } from "../../helpers/server.js";
import { concurrentRetriesCreateOne, createShownOnce, expectDenied } from "./product-checks.js";

const POLICY = "create=admin,view_all=member,revoke_any=admin,revoke_own=admin";
const ORG = "petra_tenant_3";
const admin = { userId: "petra_admin", role: Role.ADMIN };
const admin2 = { userId: "petra_admin2", role: Role.ADMIN };
const member = { userId: "petra_member", role: Role.MEMBER };
const viewer = { userId: "petra_viewer", role: Role.VIEWER };

describe("Petra Security (create=admin, view_all=member, revoke only admin)", () => {
  let s: TestServer;

  beforeAll(async () => {
    s = await startServer({ env: { KEY_POLICY: POLICY, DEFAULT_KEY_PREFIX: "petra" } });
  });
  afterAll(async () => {
    await s?.stop();
  });

  const create = (actor: typeof admin, name: string) =>
    s.connect.createKey({ organizationId: ORG, actor, name }).then((r) => ({ key: r.key!, secret: r.secret }));

  it("an admin creates a key: the secret is shown once, a retry returns the same key without it", async () => {
    const { key, secret } = await createShownOnce(s, {
      organizationId: ORG,
      actor: admin,
      name: "SIEM export",
      scopes: ["alerts:read"],
      requestId: "petra-create-1",
    });
    expect(key).toMatchObject({ createdBy: admin.userId, state: KeyState.ACTIVE });
    const res = await s.grpc.call("verifyKey", { key: secret, requiredScopes: ["alerts:read"] });
    expect(res.principal).toMatchObject({ organizationId: ORG, userId: admin.userId, role: Role.ADMIN });

    await concurrentRetriesCreateOne(s, { organizationId: ORG, actor: admin, name: "SOAR playbooks", requestId: "petra-create-2" });
  });

  it("members and viewers may not create keys", async () => {
    await expectDenied(s.connect.createKey({ organizationId: ORG, actor: member, name: "mine" }), "create");
    await expectDenied(s.connect.createKey({ organizationId: ORG, actor: viewer, name: "mine" }), "create");
  });

  it("every member sees every key and the audit trail; a viewer sees none of them", async () => {
    const a = await create(admin, "scanner");
    const b = await create(admin2, "ticketing");

    const membersView = await s.connect.listKeys({ organizationId: ORG, actor: member, pageSize: 1000 });
    expect(membersView.keys.map((k) => k.id)).toEqual(expect.arrayContaining([a.key.id, b.key.id]));
    expect((await s.connect.getKey({ organizationId: ORG, actor: member, keyId: b.key.id })).key?.createdBy).toBe(admin2.userId);
    const trail = await s.orgs.listAuditEvents({ organizationId: ORG, actor: member });
    expect(trail.events.map((e) => e.keyId)).toEqual(expect.arrayContaining([a.key.id, b.key.id]));

    // Below view_all, an actor sees only keys they created: a viewer has none.
    expect((await s.connect.listKeys({ organizationId: ORG, actor: viewer })).keys).toEqual([]);
    await expectDenied(s.connect.getKey({ organizationId: ORG, actor: viewer, keyId: a.key.id }), "view_all");
    await expectDenied(s.orgs.listAuditEvents({ organizationId: ORG, actor: viewer }), "view_all");
  });

  it("only admins revoke: a member is refused, naming the rule, even for a key they created", async () => {
    const a = await create(admin, "to revoke");
    await expectDenied(s.connect.revokeKey({ organizationId: ORG, actor: member, keyId: a.key.id }), "revoke_any");
    await expectDenied(s.connect.revokeKeys({ organizationId: ORG, actor: member, createdBy: admin.userId }), "revoke_any");

    // An admin who is demoted to member keeps their keys but may no longer revoke them.
    const dana = { userId: "petra_dana", role: Role.ADMIN };
    const own = await create(dana, "dana's key");
    await s.orgs.setMemberRole({ organizationId: ORG, userId: dana.userId, role: Role.MEMBER, actor: admin });
    const demoted = { ...dana, role: Role.MEMBER };
    await expectDenied(s.connect.revokeKey({ organizationId: ORG, actor: demoted, keyId: own.key.id }), "revoke_own");
    await expectDenied(s.connect.updateKey({ organizationId: ORG, actor: demoted, keyId: own.key.id, name: "x", updateMask: { paths: ["name"] } }), "revoke_own");
    expect((await s.grpc.call("verifyKey", { key: own.secret })).principal?.role).toBe(Role.MEMBER);

    // Nothing was revoked by the refused calls.
    for (const k of [a, own]) expect((await s.grpc.call("verifyKey", { key: k.secret })).valid).toBe(true);

    const revoked = await s.connect.revokeKey({ organizationId: ORG, actor: admin2, keyId: a.key.id, reason: "analyst left" });
    expect(revoked.key).toMatchObject({ state: KeyState.REVOKED, revokedBy: admin2.userId, revokeReason: "analyst left" });
    expect((await s.grpc.call("verifyKey", { key: a.secret })).code).toBe(VerifyCode.REVOKED);
    const bulk = await s.connect.revokeKeys({ organizationId: ORG, actor: admin, createdBy: dana.userId });
    expect(bulk.revokedCount).toBe(1);
    expect((await s.grpc.call("verifyKey", { key: own.secret })).code).toBe(VerifyCode.REVOKED);
  });
});
