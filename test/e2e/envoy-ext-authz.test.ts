// Envoy external authorization end to end: a grpc-js client built from
// Envoy's own .proto files (shipped by @grpc/grpc-js-xds) sends the
// CheckRequests Envoy sends, to a real server on MariaDB and Redis. Using
// Envoy's definitions, not our subset, proves the two agree on the wire.
import path from "node:path";
import { createRequire } from "node:module";
import * as grpc from "@grpc/grpc-js";
import { loadSync } from "@grpc/proto-loader";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { Role } from "../../gen/apikeys/v1/apikeys_pb.js";
import { CheckRequestSchema, CheckResponseSchema } from "../../gen/envoy/service/auth/v3/external_auth_pb.js";
import { generateSecret } from "../../src/keys/key-format.js";
import { MemoryStore } from "../../src/store/memory-store.js";
import { type TestServer, startServer } from "../helpers/server.js";

const ENVOY_TOKEN = "envoy-caller-token-0123456789-7Hq2Lm9Zx";
const ADMIN_TOKEN = "admin-caller-token-0123456789-7Hq2Lm9Zx";
const TENANT_ENVOY_TOKEN = "tenant-envoy-token-0123456789-7Hq2Lm9Zx";
const CALLERS = JSON.stringify([
  { name: "envoy", token: ENVOY_TOKEN, allow: ["verify"] },
  { name: "admin", token: ADMIN_TOKEN, allow: ["manage", "verify", "admin"] },
  // One tenant's gateway: it may verify keys of org_envoy only.
  { name: "tenant-envoy", token: TENANT_ENVOY_TOKEN, allow: ["verify"], organizations: ["org_envoy"] },
]);
const owner = { userId: "u_owner", role: Role.OWNER };

// What Envoy's CheckResponse looks like through proto-loader (snake_case, enums by name).
interface HeaderOption {
  header: { key: string; value: string };
  append: { value: boolean } | null;
}
interface CheckResponse {
  status: { code: number; message: string };
  http_response: "ok_response" | "denied_response";
  ok_response?: { headers: HeaderOption[]; headers_to_remove: string[]; query_parameters_to_remove: string[] };
  denied_response?: { status: { code: string }; headers: HeaderOption[]; body: string };
}

type CheckFn = (req: object, md: grpc.Metadata, cb: (err: grpc.ServiceError | null, res: CheckResponse) => void) => void;

function envoyClient(port: number): grpc.Client & { Check: CheckFn } {
  const deps = path.join(path.dirname(createRequire(import.meta.url).resolve("@grpc/grpc-js-xds/package.json")), "deps");
  const definition = loadSync("envoy/service/auth/v3/external_auth.proto", {
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
    includeDirs: ["envoy-api", "xds", "googleapis", "protoc-gen-validate"].map((d) => path.join(deps, d)),
  });
  const Authorization = grpc.loadPackageDefinition(definition).envoy as unknown as {
    service: { auth: { v3: { Authorization: new (address: string, creds: grpc.ChannelCredentials) => grpc.Client & { Check: CheckFn } } } };
  };
  return new Authorization.service.auth.v3.Authorization(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
}

/** The headers of one HTTP request as Envoy reports them (names in lower case). */
interface HttpRequest {
  headers?: Record<string, string>;
  /** The list form Envoy sends instead of `headers` with encode_raw_headers: true. */
  rawHeaders?: [string, string][];
  path?: string;
  contextExtensions?: Record<string, string>;
}

function headerMap(options: HeaderOption[]): Record<string, string> {
  return Object.fromEntries(options.map((o) => [o.header.key, o.header.value]));
}

describe("Envoy ext_authz (envoy.service.auth.v3.Authorization/Check)", () => {
  let s: TestServer;
  let client: ReturnType<typeof envoyClient>;
  let clock = Date.UTC(2030, 0, 15, 12, 0, 30);

  const check = (req: HttpRequest, token: string | null = ENVOY_TOKEN): Promise<CheckResponse> => {
    const md = new grpc.Metadata();
    if (token) md.set("authorization", `Bearer ${token}`);
    const request = {
      attributes: {
        request: {
          http: {
            method: "GET",
            host: "api.example.com",
            path: req.path ?? "/v1/documents",
            headers: req.headers ?? {},
            header_map: { headers: (req.rawHeaders ?? []).map(([key, value]) => ({ key, raw_value: Buffer.from(value) })) },
          },
        },
        context_extensions: req.contextExtensions ?? {},
      },
    };
    return new Promise((resolve, reject) => client.Check(request, md, (err, res) => (err ? reject(err) : resolve(res))));
  };

  const denied = (res: CheckResponse) => {
    expect(res.http_response).toBe("denied_response");
    const d = res.denied_response!;
    return { status: d.status.code, headers: headerMap(d.headers), body: JSON.parse(d.body) as { error: string; message: string }, rpc: res.status.code };
  };

  const createKey = async (init: { scopes?: string[]; projectId?: string; ttl?: string; limits?: object; org?: string } = {}) => {
    const res = await s.connect.createKey({
      organizationId: init.org ?? "org_envoy",
      projectId: init.projectId,
      actor: owner,
      name: "gateway key",
      scopes: init.scopes ?? [],
      limits: init.limits,
      expiration: init.ttl ? { case: "ttl", value: { seconds: BigInt(init.ttl) } } : { case: undefined },
    });
    return { secret: res.secret, id: res.key!.id };
  };

  beforeAll(async () => {
    s = await startServer({
      now: () => clock,
      env: { CALLERS, TEST_CALLER_TOKEN: ADMIN_TOKEN, EXT_AUTHZ_SCOPES_HEADER: "X-Required-Scopes" },
    });
    client = envoyClient(s.grpcPort);
  });
  afterAll(async () => {
    client?.close();
    await s?.stop();
  });

  it("allows a valid Bearer key, tells the upstream who it is, and strips the key", async () => {
    const { secret, id } = await createKey({ projectId: "proj_1", scopes: ["documents:read", "documents:list"] });
    const res = await check({ headers: { authorization: `Bearer ${secret}`, "x-apikey-user": "forged", "x-apikey-role": "owner" } });
    expect(res.status.code).toBe(0);
    expect(res.http_response).toBe("ok_response");
    const ok = res.ok_response!;
    expect(headerMap(ok.headers)).toEqual({
      "x-apikey-id": id,
      "x-apikey-organization": "org_envoy",
      "x-apikey-project": "proj_1",
      "x-apikey-user": "u_owner",
      "x-apikey-role": "owner",
      "x-apikey-scopes": "documents:read,documents:list",
    });
    // append=false: the client's forged x-apikey-user is replaced, not joined.
    for (const h of ok.headers) expect(h.append).toEqual({ value: false });
    expect(ok.headers_to_remove).toEqual(["authorization"]);
    expect(JSON.stringify(res)).not.toContain(secret);
  });

  it("accepts X-API-Key and the token / api_key query parameters, removing whichever carried the key", async () => {
    const { secret } = await createKey();
    const viaHeader = await check({ headers: { "x-api-key": secret } });
    expect(viaHeader.ok_response?.headers_to_remove).toContain("x-api-key");
    // No project and no scopes: the project header is removed (never forwarded from the client) and scopes say "*".
    expect(viaHeader.ok_response?.headers_to_remove).toContain("x-apikey-project");
    expect(headerMap(viaHeader.ok_response!.headers)["x-apikey-scopes"]).toBe("*");

    const viaToken = await check({ path: `/v1/documents?page=2&token=${encodeURIComponent(secret)}` });
    expect(viaToken.ok_response?.query_parameters_to_remove).toEqual(["token"]);
    const viaApiKey = await check({ path: `/v1/documents?api_key=${secret}` });
    expect(viaApiKey.ok_response?.query_parameters_to_remove).toEqual(["api_key"]);
  });

  it("reads the raw header list Envoy sends with encode_raw_headers", async () => {
    const { secret } = await createKey({ scopes: ["documents:read"] });
    const ok = await check({ rawHeaders: [["X-Api-Key", secret], ["accept", "application/json"]] });
    expect(ok.ok_response?.headers_to_remove).toContain("x-api-key");
    // Repeated headers are combined as in the map form, so a second scope header adds to the first.
    const d = denied(await check({ rawHeaders: [["x-api-key", secret], ["x-required-scopes", "documents:read"], ["x-required-scopes", "billing:read"]] }));
    expect(d.body.error).toBe("INSUFFICIENT_SCOPE");
  });

  it("denies a request without a key with 401, a challenge and a JSON body", async () => {
    const d = denied(await check({ headers: { authorization: "Basic dXNlcjpwYXNz" } }));
    expect(d.status).toBe("Unauthorized");
    expect(d.rpc).toBe(grpc.status.UNAUTHENTICATED);
    expect(d.headers).toMatchObject({ "content-type": "application/json", "www-authenticate": "Bearer" });
    expect(d.body.error).toBe("MISSING_KEY");
  });

  it("denies unknown, malformed, oversized, revoked and expired keys with 401", async () => {
    expect(denied(await check({ headers: { "x-api-key": generateSecret("sk") } })).body.error).toBe("NOT_FOUND");
    expect(denied(await check({ headers: { "x-api-key": "not-a-key" } })).body.error).toBe("NOT_FOUND");
    expect(denied(await check({ headers: { "x-api-key": "x".repeat(1000) } })).body.error).toBe("NOT_FOUND");

    const revoked = await createKey();
    await s.connect.revokeKey({ organizationId: "org_envoy", keyId: revoked.id, actor: owner });
    const r = denied(await check({ headers: { authorization: `Bearer ${revoked.secret}` } }));
    expect([r.status, r.body.error]).toEqual(["Unauthorized", "REVOKED"]);

    const expiring = await createKey({ ttl: "60" });
    expect((await check({ headers: { "x-api-key": expiring.secret } })).http_response).toBe("ok_response");
    clock += 60_000;
    expect(denied(await check({ headers: { "x-api-key": expiring.secret } })).body.error).toBe("EXPIRED");
  });

  it("requires the route's scopes (context_extensions) and the configured scopes header: 403 when missing", async () => {
    const { secret } = await createKey({ scopes: ["documents:read"] });
    const headers = { "x-api-key": secret };
    expect((await check({ headers, contextExtensions: { required_scopes: "documents:read" } })).http_response).toBe("ok_response");
    const d = denied(await check({ headers, contextExtensions: { required_scopes: "documents:read, documents:write" } }));
    expect([d.status, d.rpc, d.body.error]).toEqual(["Forbidden", grpc.status.PERMISSION_DENIED, "INSUFFICIENT_SCOPE"]);
    expect(denied(await check({ headers: { ...headers, "x-required-scopes": "billing:read" } })).body.error).toBe("INSUFFICIENT_SCOPE");
  });

  it("denies keys of a switched-off organization with 403", async () => {
    const { secret } = await createKey({ org: "org_off" });
    await s.orgs.setApiAccess({ organizationId: "org_off", enabled: false, actor: owner });
    const d = denied(await check({ headers: { "x-api-key": secret } }));
    expect([d.status, d.body.error]).toEqual(["Forbidden", "DISABLED"]);
  });

  it("answers 429 with Retry-After when a rate limit or the monthly credits run out", async () => {
    const toWindowEnd = 60 - ((clock / 1000) % 60);
    const limited = await createKey({ limits: { requestsPerMinute: 1 } });
    expect((await check({ headers: { "x-api-key": limited.secret } })).http_response).toBe("ok_response");
    const rate = denied(await check({ headers: { "x-api-key": limited.secret } }));
    expect([rate.status, rate.rpc, rate.body.error]).toEqual(["TooManyRequests", grpc.status.RESOURCE_EXHAUSTED, "RATE_LIMITED"]);
    expect(rate.headers["retry-after"]).toBe(String(toWindowEnd));

    const metered = await createKey({ limits: { monthlyCredits: 5n } });
    const credits = denied(await check({ headers: { "x-api-key": metered.secret }, contextExtensions: { cost: "6" } }));
    expect([credits.status, credits.body.error]).toEqual(["TooManyRequests", "USAGE_EXCEEDED"]);
    expect(credits.headers["retry-after"]).toBe(String((Date.UTC(2030, 1, 1) - clock) / 1000));
  });

  it("refuses callers that are not allowed to verify: Envoy must authenticate too", async () => {
    await expect(check({ headers: {} }, null)).rejects.toMatchObject({ code: grpc.status.UNAUTHENTICATED });
    await expect(check({ headers: {} }, "not-a-known-caller-token")).rejects.toMatchObject({ code: grpc.status.UNAUTHENTICATED });
  });

  // Every malformed input is a denial, never a gRPC error: Envoy with failure_mode_allow lets a request through
  // when its Check fails, so an error the client can provoke would be a way in.
  describe("denies every malformed input (never an error that failure_mode_allow would turn into allow)", () => {
    let secret: string;
    beforeAll(async () => {
      secret = (await createKey()).secret;
    });
    const badRequest = (res: CheckResponse) => {
      const d = denied(res);
      expect([d.status, d.rpc, d.body.error]).toEqual(["BadRequest", grpc.status.INVALID_ARGUMENT, "BAD_REQUEST"]);
      return d;
    };

    it("too many scopes in the client's scopes header", async () => {
      const scopes = Array.from({ length: 5000 }, (_, i) => `s${i}`).join(",");
      badRequest(await check({ headers: { "x-api-key": secret, "x-required-scopes": scopes } }));
    });

    it("a scope too long in the client's scopes header, and its text is not echoed", async () => {
      const d = badRequest(await check({ headers: { "x-api-key": secret, "x-required-scopes": `documents:${"r".repeat(5000)}` } }));
      expect(JSON.stringify(d)).not.toContain("rrrrrrrr");
    });

    it("too many scopes in the route's required_scopes", async () => {
      const scopes = Array.from({ length: 500 }, (_, i) => `s${i}`).join(",");
      badRequest(await check({ headers: { "x-api-key": secret }, contextExtensions: { required_scopes: scopes } }));
    });

    it("a route cost that is not a number of credits, negative, or too large", async () => {
      for (const cost of ["lots", "-1", "1.5", "99999999999", "0x10"]) {
        badRequest(await check({ headers: { "x-api-key": secret }, contextExtensions: { cost } }));
      }
    });

    it("an oversized or malformed key in each place a key is looked for: 401, as an unknown key", async () => {
      const cases: Record<string, string>[] = [
        { "x-api-key": "k".repeat(100_000) },
        { authorization: `Bearer ${"k".repeat(100_000)}` },
        { "x-api-key": "\u0000\u0001" },
        { authorization: "Bearer sk_" },
      ];
      for (const headers of cases) {
        expect(denied(await check({ headers })).body.error).toBe("NOT_FOUND");
      }
      expect(denied(await check({ path: `/v1?api_key=${"k".repeat(100_000)}` })).body.error).toBe("NOT_FOUND");
      expect(denied(await check({ path: "/v1?api_key=%zz%" })).body.error).toBe("NOT_FOUND");
    });

    it("a header value that is not UTF-8 (Envoy passes a request's bytes as they came)", async () => {
      // Built as Envoy would send it, then one header's bytes made invalid UTF-8 (0xff), as an HTTP/1 client may send.
      const marker = "MARKERMARKER";
      const request = create(CheckRequestSchema, {
        attributes: { request: { http: { path: "/", headers: { "x-api-key": secret, "x-note": marker } } } },
      });
      const bytes = Buffer.from(toBinary(CheckRequestSchema, request));
      const at = bytes.indexOf(marker);
      bytes.fill(0xff, at, at + marker.length);
      const raw = new grpc.Client(`127.0.0.1:${s.grpcPort}`, grpc.credentials.createInsecure());
      const md = new grpc.Metadata();
      md.set("authorization", `Bearer ${ENVOY_TOKEN}`);
      try {
        const answer = await new Promise<Buffer>((resolve, reject) =>
          raw.makeUnaryRequest("/envoy.service.auth.v3.Authorization/Check", (b: Buffer) => b, (b: Buffer) => b, bytes, md, (err, res) =>
            err ? reject(err) : resolve(res!),
          ),
        );
        const res = fromBinary(CheckResponseSchema, answer);
        expect(res.status?.code).toBe(grpc.status.INVALID_ARGUMENT);
        expect(res.httpResponse.case).toBe("deniedResponse");
      } finally {
        raw.close();
      }
    });

    it("a request larger than MAX_MESSAGE_BYTES (headers up to EXT_AUTHZ_MAX_MESSAGE_BYTES are read)", async () => {
      badRequest(await check({ headers: { "x-api-key": secret, "x-required-scopes": "a,".repeat(200_000) } }));
      const big = await check({ headers: { "x-api-key": secret, "x-padding": "p".repeat(200_000) } });
      expect(big.http_response).toBe("ok_response");
    });

    it("a request without attributes at all: 401, a missing key", async () => {
      const md = new grpc.Metadata();
      md.set("authorization", `Bearer ${ENVOY_TOKEN}`);
      const res = await new Promise<CheckResponse>((resolve, reject) => client.Check({}, md, (err, r) => (err ? reject(err) : resolve(r))));
      expect(denied(res).body.error).toBe("MISSING_KEY");
    });
  });

  it("denies a tenant's gateway another organization's key as unknown (401 NOT_FOUND), and spends none of its credits", async () => {
    const own = await createKey();
    const other = await createKey({ org: "org_other", limits: { monthlyCredits: 10n } });
    expect((await check({ headers: { "x-api-key": own.secret } }, TENANT_ENVOY_TOKEN)).http_response).toBe("ok_response");
    const unknown = denied(await check({ headers: { "x-api-key": generateSecret("sk") } }, TENANT_ENVOY_TOKEN));
    const foreign = denied(await check({ headers: { "x-api-key": other.secret }, contextExtensions: { cost: "10" } }, TENANT_ENVOY_TOKEN));
    // Word for word what an unknown key gets: nothing says the key exists.
    expect(foreign).toEqual(unknown);
    expect(foreign.body.error).toBe("NOT_FOUND");
    // The gateway allowed every organization still sees it, with all of its credits.
    const all = await s.connect.verifyKey({ key: other.secret, cost: 10 });
    expect([all.valid, all.remainingCredits]).toEqual([true, 0n]);
  });
});

describe("Envoy ext_authz when the database is down", () => {
  it("denies with 503, never allows", async () => {
    const store = new MemoryStore();
    store.findByHash = () => Promise.reject(new Error("connection refused"));
    // Down from the start: the membership filter cannot load either, so it rules nothing out.
    store.countSecretHashes = () => Promise.reject(new Error("connection refused"));
    const s = await startServer({ store });
    const client = envoyClient(s.grpcPort);
    try {
      const res = await new Promise<CheckResponse>((resolve, reject) =>
        client.Check({ attributes: { request: { http: { path: "/", headers: { "x-api-key": generateSecret("sk") } } } } }, new grpc.Metadata(), (err, r) =>
          err ? reject(err) : resolve(r),
        ),
      );
      expect(res.http_response).toBe("denied_response");
      expect(res.denied_response?.status.code).toBe("ServiceUnavailable");
      expect(res.status.code).toBe(grpc.status.UNAVAILABLE);
      expect(JSON.parse(res.denied_response!.body).error).toBe("UNAVAILABLE");
    } finally {
      client.close();
      await s.stop();
    }
  });
});
