// Service callers on both ports: only configured callers get in, each only to
// the half of the API it is allowed, and no token ever comes back out — not in
// an error, not in a log line.
import { fromBinary } from "@bufbuild/protobuf";
import { anyUnpack } from "@bufbuild/protobuf/wkt";
import { type Client, Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ApiKeyService, OrganizationService, Role, VerifyCode } from "../../gen/apikeys/v1/apikeys_pb.js";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { StatusSchema } from "../../gen/google/rpc/status_pb.js";
import { createLogger } from "../../src/logger.js";
import { GrpcClient, type TestServer, startServer } from "../helpers/server.js";

const WEB_TOKEN = "web-token-4bd1e0c9a7f2-7Hq2Lm9Zx";
const GATEWAY_TOKEN = "gateway-token-77c0a91e3b-7Hq2Lm9Zx";
const WRONG_TOKEN = "guessed-token-0f0f0f0f0f0f-7Hq2Lm9Zx";
const KEYS_TOKEN = "keys-only-token-5d2e8a41c0b7-7Hq2Lm9Zx";
const CALLERS = JSON.stringify([
  { name: "web", token: WEB_TOKEN, allow: ["manage", "verify", "admin"] },
  { name: "gateway", token: GATEWAY_TOKEN, allow: ["verify"] },
  // Manages keys, but does not administer organizations: members' roles and API access are not its to change.
  { name: "keys", token: KEYS_TOKEN, allow: ["manage", "verify"] },
]);
const owner = { userId: "u_owner", role: Role.OWNER };

/** What a failed call looked like on the wire, whichever protocol carried it. */
interface Failure {
  code: number;
  reason: string;
  /** Everything the caller got back, to search for tokens. */
  text: string;
}

async function failure(p: Promise<unknown>): Promise<Failure> {
  try {
    await p;
  } catch (err) {
    if (err instanceof ConnectError) {
      const info = err.findDetails(ErrorInfoSchema)[0];
      return { code: err.code, reason: info?.reason ?? "", text: `${err.rawMessage} ${JSON.stringify(info ?? {})}` };
    }
    const e = err as grpc.ServiceError;
    const bin = e.metadata.get("grpc-status-details-bin")[0] as Buffer | undefined;
    const status = bin ? fromBinary(StatusSchema, bin) : undefined;
    const info = status?.details[0] ? anyUnpack(status.details[0], ErrorInfoSchema) : undefined;
    return { code: e.code, reason: info?.reason ?? "", text: `${e.details} ${e.message} ${JSON.stringify(e.metadata.getMap())} ${JSON.stringify(info ?? {})}` };
  }
  throw new Error("expected the call to fail");
}

/** One port's view: CreateKey, VerifyKey and SetMemberRole sent with a given authorization value. */
interface Port {
  name: string;
  createKey(authorization: string | undefined): Promise<unknown>;
  verifyKey(authorization: string | undefined, key: string): Promise<{ code: VerifyCode }>;
  setMemberRole(authorization: string | undefined): Promise<unknown>;
}

function grpcPort(s: TestServer): Port {
  const keys = new GrpcClient(ApiKeyService, `127.0.0.1:${s.grpcPort}`);
  const orgs = new GrpcClient(OrganizationService, `127.0.0.1:${s.grpcPort}`);
  const md = (authorization: string | undefined) => {
    const m = new grpc.Metadata();
    if (authorization !== undefined) m.set("authorization", authorization);
    return m;
  };
  return {
    name: "gRPC",
    createKey: (a) => keys.call("createKey", { organizationId: "org_auth", actor: owner, name: "via grpc" }, md(a)),
    verifyKey: (a, key) => keys.call("verifyKey", { key }, md(a)),
    setMemberRole: (a) => orgs.call("setMemberRole", { organizationId: "org_auth", userId: "u_x", role: Role.MEMBER }, md(a)),
  };
}

function connectPort(s: TestServer): Port {
  const clients = (authorization: string | undefined) => {
    const transport = createConnectTransport({
      baseUrl: `http://127.0.0.1:${s.httpPort}`,
      httpVersion: "1.1",
      interceptors: authorization === undefined ? [] : [(next) => (req) => (req.header.set("authorization", authorization), next(req))],
    });
    return { keys: createClient(ApiKeyService, transport), orgs: createClient(OrganizationService, transport) };
  };
  const keys = (a: string | undefined): Client<typeof ApiKeyService> => clients(a).keys;
  return {
    name: "Connect",
    createKey: (a) => keys(a).createKey({ organizationId: "org_auth", actor: owner, name: "via connect" }),
    verifyKey: (a, key) => keys(a).verifyKey({ key }),
    setMemberRole: (a) => clients(a).orgs.setMemberRole({ organizationId: "org_auth", userId: "u_x", role: Role.MEMBER }),
  };
}

describe("caller authentication", () => {
  let s: TestServer;
  const logLines: string[] = [];

  beforeAll(async () => {
    s = await startServer({
      env: { CALLERS, ALLOW_UNAUTHENTICATED_CALLERS: "false", LOG_LEVEL: "debug" },
      logger: createLogger("debug", { write: (line: string) => void logLines.push(line) }),
    });
  });
  afterAll(async () => {
    await s?.stop();
  });

  for (const [label, make] of [["gRPC port", grpcPort], ["Connect port", connectPort]] as const) {
    describe(label, () => {
      let port: Port;
      beforeAll(() => {
        port = make(s);
      });

      it("refuses a call without a token: UNAUTHENTICATED", async () => {
        for (const call of [port.createKey(undefined), port.verifyKey(undefined, "sk_x"), port.setMemberRole(undefined)]) {
          expect(await failure(call)).toMatchObject({ code: Code.Unauthenticated, reason: "CALLER_UNAUTHENTICATED" });
        }
      });

      it("refuses an unknown or malformed token: UNAUTHENTICATED, and never echoes it", async () => {
        for (const authorization of [`Bearer ${WRONG_TOKEN}`, `Basic ${WRONG_TOKEN}`, `Bearer ${WEB_TOKEN}x`, WEB_TOKEN, "Bearer"]) {
          const f = await failure(port.createKey(authorization));
          expect(f, authorization).toMatchObject({ code: Code.Unauthenticated, reason: "CALLER_UNAUTHENTICATED" });
          expect(f.text).not.toContain(WRONG_TOKEN);
          expect(f.text).not.toContain(WEB_TOKEN);
        }
      });

      it("lets a verify-only caller verify, but not manage: PERMISSION_DENIED", async () => {
        const gateway = `Bearer ${GATEWAY_TOKEN}`;
        expect((await port.verifyKey(gateway, "sk_notakey")).code).toBe(VerifyCode.NOT_FOUND);
        for (const call of [port.createKey(gateway), port.setMemberRole(gateway)]) {
          const f = await failure(call);
          expect(f).toMatchObject({ code: Code.PermissionDenied, reason: "CALLER_NOT_ALLOWED" });
          expect(f.text).toContain('caller "gateway"');
          expect(f.text).not.toContain(GATEWAY_TOKEN);
        }
      });

      it("does not let a manage caller reach OrganizationService without admin: PERMISSION_DENIED", async () => {
        const keys = `Bearer ${KEYS_TOKEN}`;
        await port.createKey(keys);
        const f = await failure(port.setMemberRole(keys));
        expect(f).toMatchObject({ code: Code.PermissionDenied, reason: "CALLER_NOT_ALLOWED" });
        expect(f.text).toContain('caller "keys" is not allowed to administer organizations');
      });

      it("lets a manage and admin caller manage, administer and verify; the key it creates verifies for the gateway", async () => {
        const created = (await port.createKey(`bearer ${WEB_TOKEN}`)) as { secret: string };
        expect((await port.verifyKey(`Bearer ${WEB_TOKEN}`, created.secret)).code).toBe(VerifyCode.VALID);
        expect((await port.verifyKey(`Bearer ${GATEWAY_TOKEN}`, created.secret)).code).toBe(VerifyCode.VALID);
        await port.setMemberRole(`Bearer ${WEB_TOKEN}`);
      });
    });
  }

  it("authenticates before decoding: an unknown caller's garbage is UNAUTHENTICATED, not INVALID_ARGUMENT", async () => {
    const client = new grpc.Client(`127.0.0.1:${s.grpcPort}`, grpc.credentials.createInsecure());
    const send = (md: grpc.Metadata) =>
      new Promise<grpc.ServiceError | null>((resolve) =>
        client.makeUnaryRequest(
          "/apikeys.v1.ApiKeyService/CreateKey",
          (b: Buffer) => b,
          (b: Buffer) => b,
          Buffer.from([0xff, 0xff, 0xff]),
          md,
          (err) => resolve(err),
        ),
      );
    expect((await send(new grpc.Metadata()))?.code).toBe(grpc.status.UNAUTHENTICATED);
    const web = new grpc.Metadata();
    web.set("authorization", `Bearer ${WEB_TOKEN}`);
    expect((await send(web))?.code).toBe(grpc.status.INVALID_ARGUMENT);
    client.close();
  });

  it("records the authenticated caller's name in the audit trail", async () => {
    const res = await s.orgs.listAuditEvents(
      { organizationId: "org_auth", actor: owner },
      { headers: { authorization: `Bearer ${WEB_TOKEN}` } },
    );
    expect(res.events.length).toBeGreaterThan(0);
    expect(new Set(res.events.map((e) => e.caller))).toEqual(new Set(["web", "keys"]));
  });

  it("writes no token to the logs (debug level)", () => {
    // The capture itself works (so an empty log cannot pass for a clean one).
    s.app.logger.debug({ probe: "log-capture" }, "probe");
    const log = logLines.join("");
    expect(log).toContain("log-capture");
    for (const token of [WEB_TOKEN, GATEWAY_TOKEN, WRONG_TOKEN, KEYS_TOKEN]) expect(log).not.toContain(token);
  });
});
