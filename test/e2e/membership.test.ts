// Membership changes only through OrganizationService, and a key owner's
// rights end where the product's begin: each attack an outside review made
// against real instances (MySQL, Redis), replayed here.
import { Code, ConnectError } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Role, VerifyCode } from "../../gen/apikeys/v1/apikeys_pb.js";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { type TestServer, startServer } from "../helpers/server.js";

async function refusal(p: Promise<unknown>): Promise<{ code: Code; reason: string; message: string }> {
  try {
    await p;
  } catch (err) {
    if (!(err instanceof ConnectError)) throw err;
    return { code: err.code, reason: err.findDetails(ErrorInfoSchema)[0]?.reason ?? "", message: err.rawMessage };
  }
  throw new Error("expected the call to be refused");
}

const admin = { userId: "u_admin", role: Role.ADMIN };

describe("membership and key privileges (default KEY_POLICY)", () => {
  let s: TestServer;
  beforeAll(async () => {
    s = await startServer();
  });
  afterAll(async () => {
    await s?.stop();
  });

  const createAs = (org: string, userId: string, role: Role, extra: object = {}) =>
    s.connect.createKey({ organizationId: org, actor: { userId, role }, name: `${userId}'s key`, ...extra });
  const roleOf = async (secret: string) => {
    const res = await s.connect.verifyKey({ key: secret });
    return { code: res.code, role: res.principal?.role };
  };

  it("keeps a demoted user demoted: a CreateKey with a stale OWNER role changes neither the role nor their keys", async () => {
    const org = "org_stale";
    const first = await createAs(org, "u_alice", Role.OWNER);
    expect(await roleOf(first.secret)).toEqual({ code: VerifyCode.VALID, role: Role.OWNER });
    await s.orgs.setMemberRole({ organizationId: org, userId: "u_alice", role: Role.MEMBER, actor: admin });
    expect(await roleOf(first.secret)).toEqual({ code: VerifyCode.VALID, role: Role.MEMBER });

    // The product's backend still holds her old session, and claims OWNER.
    const second = await createAs(org, "u_alice", Role.OWNER);
    for (const secret of [first.secret, second.secret]) expect(await roleOf(secret)).toEqual({ code: VerifyCode.VALID, role: Role.MEMBER });

    // Demoted below the create rule, a stale claim does not let her create at all.
    await s.orgs.setMemberRole({ organizationId: org, userId: "u_alice", role: Role.VIEWER, actor: admin });
    expect(await refusal(createAs(org, "u_alice", Role.OWNER))).toMatchObject({ code: Code.PermissionDenied, reason: "ROLE_TOO_LOW" });
    expect(await roleOf(first.secret)).toEqual({ code: VerifyCode.VALID, role: Role.VIEWER });
  });

  it("keeps a removed member's keys suspended: their CreateKey is refused and does not revive them", async () => {
    const org = "org_removed";
    const old = await createAs(org, "u_bob", Role.MEMBER);
    await s.orgs.removeMember({ organizationId: org, userId: "u_bob", revokeKeys: false, actor: admin });
    expect((await roleOf(old.secret)).code).toBe(VerifyCode.DISABLED);

    const r = await refusal(createAs(org, "u_bob", Role.MEMBER));
    expect(r).toMatchObject({ code: Code.PermissionDenied, reason: "NOT_A_MEMBER" });
    expect(r.message).toContain("was removed from the organization");
    expect((await roleOf(old.secret)).code).toBe(VerifyCode.DISABLED);
    // Nothing was created either.
    const keys = await s.connect.listKeys({ organizationId: org, actor: admin, showRevoked: true });
    expect(keys.keys.map((k) => k.id)).toEqual([old.key!.id]);

    // Only OrganizationService brings him back.
    await s.orgs.setMemberRole({ organizationId: org, userId: "u_bob", role: Role.MEMBER, actor: admin });
    expect(await roleOf(old.secret)).toEqual({ code: VerifyCode.VALID, role: Role.MEMBER });
  });

  it("adds a first-time creator with the role claimed for them (KEY_POLICY enroll=owner, the default)", async () => {
    const { secret } = await createAs("org_new", "u_carol", Role.ADMIN);
    expect(await roleOf(secret)).toEqual({ code: VerifyCode.VALID, role: Role.ADMIN });
  });

  it("refuses a member lifting their own key's limits or moving it to another tier: update_limits (admin by default)", async () => {
    const org = "org_limits";
    const { key, secret } = await createAs(org, "u_dave", Role.MEMBER, { limits: { requestsPerMinute: 1 }, metadata: { tier: "free" } });
    const member = { userId: "u_dave", role: Role.MEMBER };
    const lift = s.connect.updateKey({ organizationId: org, keyId: key!.id, actor: member, limits: {}, updateMask: { paths: ["limits"] } });
    expect(await refusal(lift)).toMatchObject({ code: Code.PermissionDenied, reason: "ROLE_TOO_LOW" });
    const tier = s.connect.updateKey({ organizationId: org, keyId: key!.id, actor: member, metadata: { tier: "enterprise" }, updateMask: { paths: ["name", "metadata"] } });
    const r = await refusal(tier);
    expect(r).toMatchObject({ code: Code.PermissionDenied, reason: "ROLE_TOO_LOW" });
    expect(r.message).toContain("update_limits");
    // Still limited, still free; renaming their own key is still theirs to do.
    expect((await s.connect.verifyKey({ key: secret })).code).toBe(VerifyCode.VALID);
    expect((await s.connect.verifyKey({ key: secret })).code).toBe(VerifyCode.RATE_LIMITED);
    const renamed = await s.connect.updateKey({ organizationId: org, keyId: key!.id, actor: member, name: "renamed", updateMask: { paths: ["name"] } });
    expect(renamed.key?.metadata).toEqual({ tier: "free" });
    // The product (an admin actor) may.
    const upgraded = await s.connect.updateKey({ organizationId: org, keyId: key!.id, actor: admin, metadata: { tier: "pro" }, updateMask: { paths: ["metadata"] } });
    expect(upgraded.key?.metadata).toEqual({ tier: "pro" });
  });

  it("does not show a key to a user who replays another user's request_id", async () => {
    const org = "org_replay";
    const original = await createAs(org, "u_erin", Role.MEMBER, { requestId: "req-7" });
    const r = await refusal(createAs(org, "u_frank", Role.MEMBER, { requestId: "req-7" }));
    expect(r).toMatchObject({ code: Code.AlreadyExists, reason: "REQUEST_ID_USED" });
    expect(r.message).not.toContain(original.key!.id);
    // Her own retry gets her key (without the secret, shown once), and so does whoever may see every key.
    const retry = await createAs(org, "u_erin", Role.MEMBER, { requestId: "req-7" });
    expect([retry.key?.id, retry.secret]).toEqual([original.key!.id, ""]);
    expect((await createAs(org, "u_admin", Role.ADMIN, { requestId: "req-7" })).key?.id).toBe(original.key!.id);
    // Frank was not made a member by his refused call.
    const frank = await createAs(org, "u_frank", Role.MEMBER);
    expect(await roleOf(frank.secret)).toEqual({ code: VerifyCode.VALID, role: Role.MEMBER });
  });
});

describe("membership only through OrganizationService (KEY_POLICY enroll=none)", () => {
  let s: TestServer;
  beforeAll(async () => {
    s = await startServer({ env: { KEY_POLICY: "enroll=none" } });
  });
  afterAll(async () => {
    await s?.stop();
  });

  it("refuses a creator who is not a member, whatever role is claimed, and takes the stored role once added", async () => {
    const create = () => s.connect.createKey({ organizationId: "org_closed", actor: { userId: "u_gina", role: Role.OWNER }, name: "k" });
    const r = await refusal(create());
    expect(r).toMatchObject({ code: Code.PermissionDenied, reason: "NOT_A_MEMBER" });
    expect(r.message).toContain("enroll=none");
    await s.orgs.setMemberRole({ organizationId: "org_closed", userId: "u_gina", role: Role.MEMBER });
    const { secret } = await create();
    const res = await s.connect.verifyKey({ key: secret });
    expect([res.code, res.principal?.role]).toEqual([VerifyCode.VALID, Role.MEMBER]);
  });
});
