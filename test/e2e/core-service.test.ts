// The core contract end to end: a real server on MariaDB, called over gRPC
// (grpc-js and connect-node's gRPC transport) and Connect/JSON (fetch, as curl would).
import { fromBinary, toJsonString } from "@bufbuild/protobuf";
import { anyUnpack } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { GetKeyResponseSchema, KeyState, Role, VerifyCode } from "../../gen/apikeys/v1/apikeys_pb.js";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { StatusSchema } from "../../gen/google/rpc/status_pb.js";
import { generateSecret } from "../../src/keys/key-format.js";
import { type TestServer, startServer } from "../helpers/server.js";

const owner = { userId: "u_owner", role: Role.OWNER };
const member = { userId: "u_member", role: Role.MEMBER };

function errorInfoOf(err: grpc.ServiceError) {
  const bin = err.metadata.get("grpc-status-details-bin")[0] as Buffer;
  const status = fromBinary(StatusSchema, bin);
  const info = anyUnpack(status.details[0], ErrorInfoSchema);
  if (!info) throw new Error("no ErrorInfo in the status details");
  return info;
}

async function grpcError(p: Promise<unknown>): Promise<grpc.ServiceError> {
  try {
    await p;
  } catch (err) {
    return err as grpc.ServiceError;
  }
  throw new Error("expected the call to fail");
}

describe("core service (gRPC + Connect on MariaDB)", () => {
  let s: TestServer;
  let clock = Date.now();

  beforeAll(async () => {
    s = await startServer({ now: () => clock });
  });
  afterAll(async () => {
    await s?.stop();
  });

  it("creates a key over gRPC: secret shown once, only metadata afterwards", async () => {
    const res = await s.grpc.call("createKey", {
      organizationId: "org_a",
      actor: owner,
      name: "ci deploys",
      prefix: "trv_ak",
      scopes: ["documents:read"],
      metadata: { tier: "pro" },
    });
    expect(res.secret).toMatch(/^trv_ak_[0-9A-Za-z]{38}$/);
    expect(res.key?.id).toMatch(/^key_/);
    expect(res.key?.preview).toBe(`${res.secret.slice(0, 11)}…${res.secret.slice(-4)}`);
    expect(res.key?.state).toBe(KeyState.ACTIVE);
    expect(res.key?.createdBy).toBe("u_owner");

    const got = await s.grpc.call("getKey", { organizationId: "org_a", keyId: res.key!.id, actor: owner });
    expect(toJsonString(GetKeyResponseSchema, got)).not.toContain(res.secret.slice(7, -4));
    expect(got.key?.metadata).toEqual({ tier: "pro" });
  });

  it("uses the default prefix when none is given", async () => {
    const res = await s.connect.createKey({ organizationId: "org_a", actor: owner, name: "default" });
    expect(res.secret.startsWith("sk_")).toBe(true);
  });

  it("verifies over gRPC, gRPC via connect-node, and Connect JSON with principal and key", async () => {
    const { secret, key } = await s.connect.createKey({
      organizationId: "org_v",
      projectId: "proj_1",
      actor: member,
      name: "verify me",
      scopes: ["documents:read"],
    });
    const viaGrpc = await s.grpc.call("verifyKey", { key: secret, requiredScopes: ["documents:read"] });
    expect(viaGrpc.valid).toBe(true);
    expect(viaGrpc.code).toBe(VerifyCode.VALID);
    expect(viaGrpc.key?.id).toBe(key!.id);
    expect(viaGrpc.principal).toMatchObject({ organizationId: "org_v", projectId: "proj_1", userId: "u_member", role: Role.MEMBER });

    const viaTransport = await s.grpcTransportClient.verifyKey({ key: secret });
    expect(viaTransport.valid).toBe(true);

    const http = await fetch(`http://127.0.0.1:${s.httpPort}/apikeys.v1.ApiKeyService/VerifyKey`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ key: secret, requiredScopes: ["documents:write"] }),
    });
    expect(http.status).toBe(200);
    const body = await http.json();
    expect(body.code).toBe("VERIFY_CODE_INSUFFICIENT_SCOPE");
    expect(body.valid ?? false).toBe(false);
    expect(body.key.id).toBe(key!.id);
  });

  it("rejects malformed keys as NOT_FOUND without touching the database", async () => {
    const spy = vi.spyOn(s.app.store, "findByHash");
    const good = generateSecret("sk");
    const bad = good.slice(0, -1) + (good.endsWith("a") ? "b" : "a");
    for (const key of [bad, "hello", "sk_short", "Bearer xyz"]) {
      const res = await s.grpc.call("verifyKey", { key });
      expect(res.valid).toBe(false);
      expect(res.code).toBe(VerifyCode.NOT_FOUND);
      expect(res.key).toBeUndefined();
    }
    expect(spy).not.toHaveBeenCalled();
    // A well-formed but unknown key is ruled out by the membership filter (test/e2e/membership.test.ts);
    // without the filter it reaches the store, and is NOT_FOUND.
    const ruledOut = s.app.membership!.stats.ruledOut;
    expect((await s.grpc.call("verifyKey", { key: good })).code).toBe(VerifyCode.NOT_FOUND);
    expect(s.app.membership!.stats.ruledOut + spy.mock.calls.length).toBe(ruledOut + 1);
    spy.mockRestore();
  });

  it("answers INVALID_ARGUMENT with an ErrorInfo for an empty or oversized key", async () => {
    const empty = await grpcError(s.grpc.call("verifyKey", { key: "" }));
    expect(empty.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(errorInfoOf(empty)).toMatchObject({ reason: "INVALID_ARGUMENT", domain: "apikeys.dev", metadata: { field: "key" } });
    const big = await grpcError(s.grpc.call("verifyKey", { key: "x".repeat(300) }));
    expect(big.code).toBe(grpc.status.INVALID_ARGUMENT);
  });

  it("validates management input and writes nothing on bad input", async () => {
    const cases: [string, Record<string, unknown>][] = [
      ["organization_id", { organizationId: "", actor: owner }],
      ["name", { organizationId: "org_bad", actor: owner, name: "n".repeat(201) }],
      ["prefix", { organizationId: "org_bad", actor: owner, prefix: "Bad-Prefix" }],
      ["actor", { organizationId: "org_bad" }],
      ["scopes", { organizationId: "org_bad", actor: owner, scopes: ["has space"] }],
      ["ttl", { organizationId: "org_bad", actor: owner, expiration: { case: "ttl", value: { seconds: -5n } } }],
    ];
    for (const [field, req] of cases) {
      const err = await grpcError(s.grpc.call("createKey", req as never));
      expect(err.code, field).toBe(grpc.status.INVALID_ARGUMENT);
      expect(err.details, field).toContain(field);
    }
    const list = await s.connect.listKeys({ organizationId: "org_bad", actor: owner });
    expect(list.keys).toHaveLength(0);
    await expect(s.connect.listKeys({ organizationId: "org_bad", actor: owner, pageSize: -1 })).rejects.toMatchObject({
      code: Code.InvalidArgument,
    });
  });

  it("answers INVALID_ARGUMENT for bytes that are not a protobuf message", async () => {
    const client = new grpc.Client(`127.0.0.1:${s.grpcPort}`, grpc.credentials.createInsecure());
    const err = await new Promise<grpc.ServiceError>((resolve) =>
      client.makeUnaryRequest(
        "/apikeys.v1.ApiKeyService/VerifyKey",
        (b: Buffer) => b,
        (b: Buffer) => b,
        Buffer.from([0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]),
        (e) => resolve(e as grpc.ServiceError),
      ),
    );
    client.close();
    expect(err.code).toBe(grpc.status.INVALID_ARGUMENT);
  });

  it("keeps tenants apart: another organization's key id is NOT_FOUND and untouched", async () => {
    const { key, secret } = await s.connect.createKey({ organizationId: "org_x", actor: owner, name: "x" });
    for (const call of [
      () => s.grpc.call("getKey", { organizationId: "org_y", keyId: key!.id, actor: owner }),
      () => s.grpc.call("revokeKey", { organizationId: "org_y", keyId: key!.id, actor: owner }),
    ]) {
      const err = await grpcError(call());
      expect(err.code).toBe(grpc.status.NOT_FOUND);
      expect(errorInfoOf(err).reason).toBe("KEY_NOT_FOUND");
    }
    expect((await s.grpc.call("verifyKey", { key: secret })).valid).toBe(true);
  });

  it("revokes idempotently; a revoked key verifies as REVOKED with its metadata", async () => {
    const { key, secret } = await s.connect.createKey({ organizationId: "org_r", actor: owner, name: "r" });
    expect((await s.grpc.call("verifyKey", { key: secret })).valid).toBe(true);
    const first = await s.grpc.call("revokeKey", { organizationId: "org_r", keyId: key!.id, actor: owner, reason: "leaked" });
    expect(first.key?.state).toBe(KeyState.REVOKED);
    expect(first.key?.revokedBy).toBe("u_owner");
    const second = await s.grpc.call("revokeKey", { organizationId: "org_r", keyId: key!.id, actor: owner });
    expect(second.key?.revokeTime).toEqual(first.key?.revokeTime);
    expect(second.key?.revokeReason).toBe("leaked");
    const res = await s.grpc.call("verifyKey", { key: secret });
    expect(res).toMatchObject({ valid: false, code: VerifyCode.REVOKED });
    expect(res.key?.id).toBe(key!.id);
  });

  it("expires exactly at expire_time, and listings show EXPIRED", async () => {
    const { key, secret } = await s.connect.createKey({
      organizationId: "org_e",
      actor: owner,
      name: "short",
      expiration: { case: "ttl", value: { seconds: 10n } },
    });
    const start = clock;
    clock = start + 9_999;
    expect((await s.grpc.call("verifyKey", { key: secret })).valid).toBe(true);
    clock = start + 10_000;
    const res = await s.grpc.call("verifyKey", { key: secret });
    expect(res.code).toBe(VerifyCode.EXPIRED);
    expect(res.key?.state).toBe(KeyState.EXPIRED);
    const list = await s.connect.listKeys({ organizationId: "org_e", actor: owner });
    expect(list.keys.find((k) => k.id === key!.id)?.state).toBe(KeyState.EXPIRED);
    clock = Date.now();
  });

  it("lists newest first with opaque page tokens, filters, and no duplicates or gaps while keys are added", async () => {
    const org = "org_page";
    const made: string[] = [];
    for (let i = 0; i < 23; i++) {
      const { key } = await s.connect.createKey({
        organizationId: org,
        actor: i % 2 ? member : owner,
        name: `k${i}`,
        projectId: i % 3 === 0 ? "p3" : "",
      });
      made.push(key!.id);
    }
    const seen: string[] = [];
    let token = "";
    let pages = 0;
    do {
      const page = await s.connect.listKeys({ organizationId: org, actor: owner, pageSize: 5, pageToken: token });
      seen.push(...page.keys.map((k) => k.id));
      token = page.nextPageToken;
      pages++;
      // A key added mid-listing is newer than everything already listed: it must not shift later pages.
      if (pages === 2) await s.connect.createKey({ organizationId: org, actor: owner, name: "late" });
    } while (token);
    expect(seen).toEqual([...made].reverse());
    expect(pages).toBe(5);

    const mine = await s.connect.listKeys({ organizationId: org, actor: owner, createdBy: "u_member", pageSize: 100 });
    expect(mine.keys.every((k) => k.createdBy === "u_member")).toBe(true);
    expect(mine.keys).toHaveLength(11);
    const p3 = await s.connect.listKeys({ organizationId: org, actor: owner, projectId: "p3", pageSize: 100 });
    expect(p3.keys).toHaveLength(8);

    await s.connect.revokeKey({ organizationId: org, keyId: made[0], actor: owner });
    const active = await s.connect.listKeys({ organizationId: org, actor: owner, pageSize: 1000 });
    expect(active.keys.map((k) => k.id)).not.toContain(made[0]);
    const all = await s.connect.listKeys({ organizationId: org, actor: owner, pageSize: 1000, showRevoked: true });
    expect(all.keys.map((k) => k.id)).toContain(made[0]);

    const token1 = (await s.connect.listKeys({ organizationId: org, actor: owner, pageSize: 2 })).nextPageToken;
    const err = await s.connect.listKeys({ organizationId: org, actor: owner, pageSize: 2, pageToken: token1, showRevoked: true }).catch((e) => e);
    expect(ConnectError.from(err).code).toBe(Code.InvalidArgument);
  });

  it("Connect errors carry the ErrorInfo reason", async () => {
    const err = await s.connect.getKey({ organizationId: "org_a", keyId: "key_nope", actor: owner }).catch((e) => e);
    const ce = ConnectError.from(err);
    expect(ce.code).toBe(Code.NotFound);
    expect(ce.findDetails(ErrorInfoSchema)[0]?.reason).toBe("KEY_NOT_FOUND");
  });
});
