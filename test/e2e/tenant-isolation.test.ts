// Tenant isolation as a matrix: every management RPC, called in one
// organization with another organization's ids, by actors of every role.
// Each call must answer NOT_FOUND (never PERMISSION_DENIED, which would reveal
// that the key exists) or an empty result, and afterwards the other
// organization's key must be exactly as before: it still verifies with the
// same principal, GetKey in its own organization returns it unchanged, and
// neither organization's audit trail has gained an event for the attempt.
import { Code } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type ApiKey, type AuditEvent, type Principal, Role, VerifyCode } from "../../gen/apikeys/v1/apikeys_pb.js";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { type TestServer, startServer } from "../helpers/server.js";
import { expectError } from "./products/product-checks.js";

const HOME = "org_home";
const AWAY = "org_away";
const alice = { userId: "u_alice", role: Role.ADMIN };
/** Reads both trails (any owner may; the service trusts the actor the caller names). */
const auditor = { userId: "u_auditor", role: Role.OWNER };
const actors = {
  viewer: { userId: "u_mallory", role: Role.VIEWER },
  member: { userId: "u_mallory", role: Role.MEMBER },
  owner: { userId: "u_mallory", role: Role.OWNER },
};

describe("tenant isolation (another organization's ids)", () => {
  let s: TestServer;
  let target: { key: ApiKey; secret: string; principal: Principal };
  const PROJECT = "proj_home";
  const REQUEST_ID = "create-once";

  async function auditOf(organizationId: string): Promise<AuditEvent[]> {
    return (await s.orgs.listAuditEvents({ organizationId, actor: auditor, pageSize: 1000 })).events;
  }

  beforeAll(async () => {
    // Last-used times must not move during the test: GetKey is compared whole.
    s = await startServer({ env: { LAST_USED_FLUSH_SECONDS: "3600" } });
    const created = await s.connect.createKey({
      organizationId: HOME,
      projectId: PROJECT,
      actor: alice,
      name: "home key",
      scopes: ["documents:read"],
      metadata: { tier: "pro" },
      requestId: REQUEST_ID,
    });
    const res = await s.grpc.call("verifyKey", { key: created.secret });
    target = { key: created.key!, secret: created.secret, principal: res.principal! };
    // The other organization exists and has a key of its own.
    await s.connect.createKey({ organizationId: AWAY, actor: actors.owner, name: "away key" });
  });
  afterAll(async () => {
    await s?.stop();
  });

  /** The target key is exactly as it was, and neither trail changed across `attempt`. */
  async function expectUntouchedBy(attempt: () => Promise<void>): Promise<void> {
    const [homeBefore, awayBefore] = [await auditOf(HOME), await auditOf(AWAY)];
    await attempt();
    const res = await s.grpc.call("verifyKey", { key: target.secret });
    expect(res).toMatchObject({ valid: true, code: VerifyCode.VALID });
    expect(res.principal).toEqual(target.principal);
    expect((await s.connect.getKey({ organizationId: HOME, keyId: target.key.id, actor: alice })).key).toEqual(target.key);
    expect(await auditOf(HOME)).toEqual(homeBefore);
    expect(await auditOf(AWAY)).toEqual(awayBefore);
  }

  type Actor = typeof alice;
  const byKeyId = {
    GetKey: (actor: Actor, keyId: string) => s.connect.getKey({ organizationId: AWAY, keyId, actor }),
    UpdateKey: (actor: Actor, keyId: string) =>
      s.connect.updateKey({
        organizationId: AWAY,
        keyId,
        actor,
        updateMask: { paths: ["name", "scopes", "expire_time"] },
        name: "hijacked",
        scopes: ["*"],
      }),
    RotateKey: (actor: Actor, keyId: string) => s.connect.rotateKey({ organizationId: AWAY, keyId, actor }),
    RevokeKey: (actor: Actor, keyId: string) => s.connect.revokeKey({ organizationId: AWAY, keyId, actor, reason: "hijack" }),
  };
  const matrix = Object.entries(byKeyId).flatMap(([rpc, call]) =>
    Object.entries(actors).map(([role, actor]) => ({ rpc, role, call: () => call(actor, target.key.id) })),
  );

  it.each(matrix)("$rpc as the other organization's $role → NOT_FOUND, nothing changed", async ({ call }) => {
    await expectUntouchedBy(async () => {
      const err = await expectError(call(), Code.NotFound, "KEY_NOT_FOUND");
      expect(err.rawMessage).toBe(`key ${target.key.id} not found`);
    });
  });

  it("answers exactly as for a key id that exists nowhere", async () => {
    const unknown = `key_${"0".repeat(22)}`;
    for (const call of Object.values(byKeyId)) {
      const err = await expectError(call(actors.owner, unknown), Code.NotFound, "KEY_NOT_FOUND");
      expect(err.rawMessage).toBe(`key ${unknown} not found`);
      expect(err.findDetails(ErrorInfoSchema)[0]?.metadata).toEqual({ key_id: unknown });
    }
  });

  it("RevokeKeys for the other organization's user revokes nothing there", async () => {
    await expectUntouchedBy(async () => {
      // Refused below revoke_any, before anything is looked at.
      await expectError(s.connect.revokeKeys({ organizationId: AWAY, actor: actors.member, createdBy: alice.userId }), Code.PermissionDenied, "ROLE_TOO_LOW");
    });
    // Allowed for an owner, it is a real (and audited) action in their organization that finds no keys.
    const [homeBefore, awayBefore] = [await auditOf(HOME), await auditOf(AWAY)];
    const res = await s.connect.revokeKeys({ organizationId: AWAY, actor: actors.owner, createdBy: alice.userId });
    expect(res.revokedCount).toBe(0);
    expect(await auditOf(HOME)).toEqual(homeBefore);
    const awayAfter = await auditOf(AWAY);
    expect(awayAfter.slice(1)).toEqual(awayBefore);
    expect(awayAfter[0]).toMatchObject({ action: "key.revoke_all", keyId: "", details: { created_by: alice.userId } });
    expect((await s.grpc.call("verifyKey", { key: target.secret })).valid).toBe(true);
  });

  it("ListKeys and ListAuditEvents never show the other organization's keys or events", async () => {
    await expectUntouchedBy(async () => {
      for (const query of [{}, { createdBy: alice.userId }, { projectId: PROJECT }, { showRevoked: true }]) {
        const res = await s.connect.listKeys({ organizationId: AWAY, actor: actors.owner, pageSize: 1000, ...query });
        expect(res.keys.map((k) => k.id)).not.toContain(target.key.id);
        expect(res.keys.every((k) => k.organizationId === AWAY)).toBe(true);
      }
      const events = await auditOf(AWAY);
      expect(events.every((e) => e.organizationId === AWAY && e.keyId !== target.key.id)).toBe(true);
    });
  });

  it("page tokens of one organization are refused in another", async () => {
    for (let i = 0; i < 2; i++) await s.connect.createKey({ organizationId: HOME, actor: alice, name: `page ${i}` });
    const keysToken = (await s.connect.listKeys({ organizationId: HOME, actor: alice, pageSize: 1 })).nextPageToken;
    const auditToken = (await s.orgs.listAuditEvents({ organizationId: HOME, actor: alice, pageSize: 1 })).nextPageToken;
    expect(keysToken).not.toBe("");
    expect(auditToken).not.toBe("");
    await expectError(
      s.connect.listKeys({ organizationId: AWAY, actor: actors.owner, pageSize: 1, pageToken: keysToken }),
      Code.InvalidArgument,
      "INVALID_ARGUMENT",
      /^page_token:/,
    );
    await expectError(
      s.orgs.listAuditEvents({ organizationId: AWAY, actor: actors.owner, pageSize: 1, pageToken: auditToken }),
      Code.InvalidArgument,
      "INVALID_ARGUMENT",
      /^page_token:/,
    );
  });

  it("a request id used in one organization creates a new key in another", async () => {
    const res = await s.connect.createKey({ organizationId: AWAY, actor: actors.owner, name: "same request id", requestId: REQUEST_ID });
    expect(res.key?.id).not.toBe(target.key.id);
    expect(res.key?.organizationId).toBe(AWAY);
    expect(res.secret).not.toBe("");
  });

  it("member and organization changes in one organization leave the other's keys alone", async () => {
    const cases = [
      () => s.orgs.setMemberRole({ organizationId: AWAY, userId: alice.userId, role: Role.VIEWER, actor: actors.owner }),
      () => s.orgs.removeMember({ organizationId: AWAY, userId: alice.userId, revokeKeys: true, actor: actors.owner }),
      () => s.orgs.setApiAccess({ organizationId: AWAY, enabled: false, actor: actors.owner }),
    ];
    for (const change of cases) {
      const homeBefore = await auditOf(HOME);
      const res = await change();
      if ("revokedCount" in res) expect(res.revokedCount).toBe(0);
      const verified = await s.grpc.call("verifyKey", { key: target.secret });
      expect(verified).toMatchObject({ valid: true, code: VerifyCode.VALID });
      expect(verified.principal).toEqual(target.principal);
      expect((await s.connect.getKey({ organizationId: HOME, keyId: target.key.id, actor: alice })).key).toEqual(target.key);
      expect(await auditOf(HOME)).toEqual(homeBefore);
    }
  });
});
