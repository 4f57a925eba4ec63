// Least privilege for service callers (CALLERS "allow" and "organizations"),
// on both ports, against a real server on MySQL and Redis: a caller limited to
// some organizations cannot create, read, change or revoke another's keys,
// cannot administer another's members, and cannot learn that another's key
// exists, or spend its credits, by verifying it.
import { fromBinary } from "@bufbuild/protobuf";
import { anyUnpack } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import { createHash } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ApiKeyService, OrganizationService, Role, VerifyCode } from "../../gen/apikeys/v1/apikeys_pb.js";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { StatusSchema } from "../../gen/google/rpc/status_pb.js";
import { generateSecret } from "../../src/keys/key-format.js";
import { GrpcClient, type TestServer, startServer } from "../helpers/server.js";

const ROOT_TOKEN = "root-caller-token-9c1e4b7a2d5f8e3b-Qx7";
const TENANT_TOKEN = "tenant-a-caller-token-3f8a1c6e9b2d-Zk4";
const TENANT_ADMIN_TOKEN = "tenant-a-admin-token-7b2e9d4a1c8f-Wm2";
const TENANT_GATEWAY_TOKEN = "tenant-a-gateway-token-5e1a8c3f7d2b-Rp9";
const CALLERS = JSON.stringify([
  { name: "root", token: ROOT_TOKEN, allow: ["manage", "verify", "admin"] },
  { name: "tenant-a", token: TENANT_TOKEN, allow: ["manage", "verify"], organizations: ["org_a", "team_*"] },
  // Configured by digest only: the token itself appears nowhere in the configuration.
  { name: "tenant-a-admin", token_sha256: createHash("sha256").update(TENANT_ADMIN_TOKEN).digest("hex"), allow: ["admin"], organizations: ["org_a"] },
  { name: "tenant-a-gateway", token: TENANT_GATEWAY_TOKEN, allow: ["verify"], organizations: ["org_a"] },
]);
const owner = { userId: "u_owner", role: Role.OWNER };

type Call = (service: "keys" | "orgs", method: string, init: object) => Promise<Record<string, unknown>>;

/** What a refused call said: its status code and google.rpc.ErrorInfo reason, on either protocol. */
async function refusal(p: Promise<unknown>): Promise<{ code: number; reason: string; text: string }> {
  try {
    await p;
  } catch (err) {
    if (err instanceof ConnectError) return { code: err.code, reason: err.findDetails(ErrorInfoSchema)[0]?.reason ?? "", text: err.rawMessage };
    const e = err as grpc.ServiceError;
    const bin = e.metadata.get("grpc-status-details-bin")[0] as Buffer | undefined;
    const status = bin ? fromBinary(StatusSchema, bin) : undefined;
    const info = status?.details[0] ? anyUnpack(status.details[0], ErrorInfoSchema) : undefined;
    return { code: e.code, reason: info?.reason ?? "", text: e.details };
  }
  throw new Error("expected the call to be refused");
}

function grpcCaller(s: TestServer, token: string): Call {
  const keys = new GrpcClient(ApiKeyService, `127.0.0.1:${s.grpcPort}`);
  const orgs = new GrpcClient(OrganizationService, `127.0.0.1:${s.grpcPort}`);
  const md = new grpc.Metadata();
  md.set("authorization", `Bearer ${token}`);
  return (service, method, init) =>
    (service === "keys" ? keys.call(method as never, init as never, md) : orgs.call(method as never, init as never, md)) as never;
}

function connectCaller(s: TestServer, token: string): Call {
  const transport = createConnectTransport({
    baseUrl: `http://127.0.0.1:${s.httpPort}`,
    httpVersion: "1.1",
    interceptors: [(next) => (req) => (req.header.set("authorization", `Bearer ${token}`), next(req))],
  });
  const clients = { keys: createClient(ApiKeyService, transport), orgs: createClient(OrganizationService, transport) };
  return (service, method, init) => (clients[service] as unknown as Record<string, (i: object) => Promise<never>>)[method](init);
}

describe("least privilege for service callers", () => {
  let s: TestServer;

  beforeAll(async () => {
    s = await startServer({ env: { CALLERS, ALLOW_UNAUTHENTICATED_CALLERS: "false", TEST_CALLER_TOKEN: ROOT_TOKEN } });
  });
  afterAll(async () => {
    await s?.stop();
  });

  for (const [label, make] of [["gRPC port", grpcCaller], ["Connect port", connectCaller]] as const) {
    describe(label, () => {
      let root: Call;
      let tenant: Call;
      let tenantAdmin: Call;
      let gateway: Call;
      beforeAll(() => {
        root = make(s, ROOT_TOKEN);
        tenant = make(s, TENANT_TOKEN);
        tenantAdmin = make(s, TENANT_ADMIN_TOKEN);
        gateway = make(s, TENANT_GATEWAY_TOKEN);
      });

      it("lets a caller limited to org_a and team_* manage keys there, by exact id and by prefix", async () => {
        for (const organizationId of ["org_a", "team_red", "team_"]) {
          const created = await tenant("keys", "createKey", { organizationId, actor: owner, name: "mine" });
          expect((created.key as { organizationId: string }).organizationId).toBe(organizationId);
        }
      });

      it("refuses every key management call in another organization: PERMISSION_DENIED, before reading anything", async () => {
        const other = (await root("keys", "createKey", { organizationId: "org_b", actor: owner, name: "theirs" })) as { key: { id: string } };
        const keyId = other.key.id;
        const calls: [string, object][] = [
          ["createKey", { organizationId: "org_b", actor: owner, name: "intruder" }],
          ["listKeys", { organizationId: "org_b", actor: owner }],
          ["getKey", { organizationId: "org_b", keyId, actor: owner }],
          ["updateKey", { organizationId: "org_b", keyId, actor: owner, name: "renamed", updateMask: { paths: ["name"] } }],
          ["rotateKey", { organizationId: "org_b", keyId, actor: owner }],
          ["revokeKey", { organizationId: "org_b", keyId, actor: owner }],
          ["revokeKeys", { organizationId: "org_b", actor: owner, createdBy: "u_owner" }],
          // "org_a" is an exact id, not a prefix: org_ab is another organization.
          ["createKey", { organizationId: "org_ab", actor: owner, name: "intruder" }],
          ["createKey", { organizationId: "tea", actor: owner, name: "intruder" }],
        ];
        for (const [method, init] of calls) {
          const r = await refusal(tenant("keys", method, init));
          expect(r, method).toMatchObject({ code: Code.PermissionDenied, reason: "ORGANIZATION_NOT_ALLOWED" });
          expect(r.text).not.toContain(keyId);
        }
        // Nothing happened to the other organization's key.
        const still = (await root("keys", "getKey", { organizationId: "org_b", keyId, actor: owner })) as { key: { name: string; revokeTime?: unknown } };
        expect([still.key.name, still.key.revokeTime]).toEqual(["theirs", undefined]);
      });

      it("keeps OrganizationService for admin callers, each in its organizations", async () => {
        expect(await refusal(tenant("orgs", "setMemberRole", { organizationId: "org_a", userId: "u_x", role: Role.OWNER }))).toMatchObject({
          code: Code.PermissionDenied,
          reason: "CALLER_NOT_ALLOWED",
        });
        await tenantAdmin("orgs", "setMemberRole", { organizationId: "org_a", userId: "u_x", role: Role.MEMBER });
        await tenantAdmin("orgs", "listAuditEvents", { organizationId: "org_a", actor: owner });
        for (const [method, init] of [
          ["setMemberRole", { organizationId: "org_b", userId: "u_x", role: Role.OWNER }],
          ["removeMember", { organizationId: "org_b", userId: "u_owner" }],
          ["setApiAccess", { organizationId: "org_b", enabled: false }],
          ["listAuditEvents", { organizationId: "org_b", actor: owner }],
        ] as const) {
          expect(await refusal(tenantAdmin("orgs", method, init)), method).toMatchObject({ code: Code.PermissionDenied, reason: "ORGANIZATION_NOT_ALLOWED" });
        }
        // An admin caller is not thereby a key manager.
        expect(await refusal(tenantAdmin("keys", "createKey", { organizationId: "org_a", actor: owner, name: "k" }))).toMatchObject({
          code: Code.PermissionDenied,
          reason: "CALLER_NOT_ALLOWED",
        });
      });

      it("answers a limited verifier NOT_FOUND for another organization's key, exactly as for no key, and spends none of its credits", async () => {
        const own = (await root("keys", "createKey", { organizationId: "org_a", actor: owner, name: "own" })) as { secret: string };
        const other = (await root("keys", "createKey", {
          organizationId: "org_b",
          actor: owner,
          name: "metered",
          limits: { monthlyCredits: 5n },
        })) as { secret: string };
        expect((await gateway("keys", "verifyKey", { key: own.secret })).code).toBe(VerifyCode.VALID);
        const foreign = await gateway("keys", "verifyKey", { key: other.secret, cost: 5 });
        const unknown = await gateway("keys", "verifyKey", { key: generateSecret("sk"), cost: 5 });
        expect(foreign).toEqual(unknown);
        expect([foreign.valid, foreign.code, foreign.key, foreign.principal]).toEqual([false, VerifyCode.NOT_FOUND, undefined, undefined]);
        // The unlimited caller still finds it with all five credits.
        const all = await root("keys", "verifyKey", { key: other.secret, cost: 5 });
        expect([all.valid, all.remainingCredits]).toEqual([true, 0n]);
      });
    });
  }
});
