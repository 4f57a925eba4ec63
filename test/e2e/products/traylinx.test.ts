// Traylinx: keys belong to a project inside an organization. Keys are created
// for a project, listed per project, and verification tells the gateway which
// project a key is for.
import { Code } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { KeyState, Role, VerifyCode } from "../../../gen/apikeys/v1/apikeys_pb.js";
import { type TestServer, startServer } from "../../helpers/server.js";
import { concurrentRetriesCreateOne, createShownOnce, expectError } from "./product-checks.js";

const ORG = "tlx_team_7";
const owner = { userId: "tlx_owner", role: Role.OWNER };
const dev = { userId: "tlx_dev", role: Role.MEMBER };

describe("Traylinx (project-scoped keys)", () => {
  let s: TestServer;

  beforeAll(async () => {
    s = await startServer({ env: { DEFAULT_KEY_PREFIX: "tlx" } });
  });
  afterAll(async () => {
    await s?.stop();
  });

  const create = (projectId: string, name: string, actor = owner) =>
    s.connect.createKey({ organizationId: ORG, projectId, actor, name }).then((r) => ({ key: r.key!, secret: r.secret }));

  it("creates a key for a project: the secret is shown once, a retry returns the same key without it", async () => {
    const { key } = await createShownOnce(s, {
      organizationId: ORG,
      projectId: "proj_search",
      actor: owner,
      name: "search backend",
      requestId: "tlx-create-1",
    });
    expect(key).toMatchObject({ organizationId: ORG, projectId: "proj_search", state: KeyState.ACTIVE, prefix: "tlx" });

    await concurrentRetriesCreateOne(s, {
      organizationId: ORG,
      projectId: "proj_search",
      actor: owner,
      name: "search indexer",
      requestId: "tlx-create-2",
    });
  });

  it("lists keys per project", async () => {
    const a1 = await create("proj_alpha", "alpha 1");
    const b1 = await create("proj_beta", "beta 1");
    const a2 = await create("proj_alpha", "alpha 2");
    const orgWide = await create("", "org-wide");
    const mine = await create("proj_alpha", "alpha dev", dev);

    const alpha = await s.connect.listKeys({ organizationId: ORG, projectId: "proj_alpha", actor: owner });
    expect(alpha.keys.map((k) => k.id)).toEqual([mine.key.id, a2.key.id, a1.key.id]);
    expect(alpha.keys.every((k) => k.projectId === "proj_alpha")).toBe(true);
    const beta = await s.connect.listKeys({ organizationId: ORG, projectId: "proj_beta", actor: owner });
    expect(beta.keys.map((k) => k.id)).toEqual([b1.key.id]);
    expect((await s.connect.listKeys({ organizationId: ORG, projectId: "proj_none", actor: owner })).keys).toEqual([]);

    // Without a project filter the organization's keys are listed, project-less ones included.
    const all = await s.connect.listKeys({ organizationId: ORG, actor: owner, pageSize: 1000 });
    expect(all.keys.map((k) => k.id)).toEqual(expect.arrayContaining([a1.key.id, a2.key.id, b1.key.id, orgWide.key.id, mine.key.id]));
    expect(all.keys.find((k) => k.id === orgWide.key.id)?.projectId).toBe("");

    // A member sees only their own keys, also within a project.
    const devsAlpha = await s.connect.listKeys({ organizationId: ORG, projectId: "proj_alpha", actor: dev });
    expect(devsAlpha.keys.map((k) => k.id)).toEqual([mine.key.id]);
  });

  it("verification reports the key's project", async () => {
    const scoped = await create("proj_gamma", "gamma");
    const res = await s.grpc.call("verifyKey", { key: scoped.secret });
    expect(res).toMatchObject({ valid: true, code: VerifyCode.VALID });
    expect(res.principal).toMatchObject({ organizationId: ORG, projectId: "proj_gamma", userId: owner.userId, role: Role.OWNER });
    expect(res.key?.projectId).toBe("proj_gamma");

    const orgWide = await create("", "org-wide verify");
    expect((await s.grpc.call("verifyKey", { key: orgWide.secret })).principal?.projectId).toBe("");
  });

  it("revokes one project key; the project's other keys keep working", async () => {
    const doomed = await create("proj_delta", "delta old");
    const kept = await create("proj_delta", "delta new");
    const revoked = await s.connect.revokeKey({ organizationId: ORG, actor: owner, keyId: doomed.key.id, reason: "replaced" });
    expect(revoked.key).toMatchObject({ state: KeyState.REVOKED, projectId: "proj_delta" });
    expect((await s.grpc.call("verifyKey", { key: doomed.secret })).code).toBe(VerifyCode.REVOKED);
    expect((await s.grpc.call("verifyKey", { key: kept.secret })).valid).toBe(true);
    const delta = await s.connect.listKeys({ organizationId: ORG, projectId: "proj_delta", actor: owner });
    expect(delta.keys.map((k) => k.id)).toEqual([kept.key.id]);
  });

  it("rejects a malformed project id and creates nothing", async () => {
    await expectError(
      s.connect.createKey({ organizationId: ORG, projectId: "proj with spaces", actor: owner, name: "bad" }),
      Code.InvalidArgument,
      "INVALID_ARGUMENT",
      /^project_id:/,
    );
    const all = await s.connect.listKeys({ organizationId: ORG, actor: owner, pageSize: 1000 });
    expect(all.keys.map((k) => k.name)).not.toContain("bad");
  });
});
