// What platform teams plug in: gRPC health checking and the HTTP probes,
// server reflection, Prometheus metrics and the per-RPC log lines.
import { create, createFileRegistry, fromBinary } from "@bufbuild/protobuf";
import { type FileDescriptorProto, FileDescriptorProtoSchema, FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";
import * as grpc from "@grpc/grpc-js";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Role, VerifyCode } from "../../gen/apikeys/v1/apikeys_pb.js";
import { MemoryStore } from "../../src/store/memory-store.js";
import { HealthClient, ReflectionClient } from "../helpers/grpc-probes.js";
import { type TestServer, startServer } from "../helpers/server.js";

const owner = { userId: "u_owner", role: Role.OWNER };

async function until(condition: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** The value of one sample in Prometheus text, e.g. sample(text, 'x_total{code="OK"}'). */
function sample(text: string, series: string): number | undefined {
  const line = text.split("\n").find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

/**
 * Builds descriptors into a registry as a reflection client does: each file
 * after its imports. Throws when an import is missing or a type does not resolve.
 */
function link(files: FileDescriptorProto[]) {
  const byName = new Map(files.map((f) => [f.name, f]));
  const ordered: FileDescriptorProto[] = [];
  const visit = (file: FileDescriptorProto) => {
    if (ordered.includes(file)) return;
    for (const name of file.dependency) {
      const dep = byName.get(name);
      if (!dep) throw new Error(`${file.name} imports ${name}, which reflection did not send`);
      visit(dep);
    }
    ordered.push(file);
  };
  files.forEach(visit);
  return createFileRegistry(create(FileDescriptorSetSchema, { file: ordered }));
}

describe("observability on a real server (MariaDB, Redis)", () => {
  let s: TestServer;
  let health: HealthClient;
  let base: string;

  beforeAll(async () => {
    s = await startServer();
    health = new HealthClient(`127.0.0.1:${s.grpcPort}`);
    base = `http://127.0.0.1:${s.httpPort}`;
  });
  afterAll(async () => {
    health?.close();
    await s?.stop();
  });

  it("health: SERVING for the server and each service, NOT_FOUND for an unknown one, and the HTTP probes agree", async () => {
    expect(await health.check("")).toBe("SERVING");
    expect(await health.check("apikeys.v1.ApiKeyService")).toBe("SERVING");
    expect(await health.check("apikeys.v1.OrganizationService")).toBe("SERVING");
    expect(await health.check("envoy.service.auth.v3.Authorization")).toBe("SERVING");
    await expect(health.check("no.such.Service")).rejects.toMatchObject({ code: grpc.status.NOT_FOUND });

    const watch = health.watch("apikeys.v1.ApiKeyService");
    await until(() => watch.statuses.length > 0);
    expect(watch.statuses).toEqual(["SERVING"]);
    watch.cancel();

    expect((await fetch(`${base}/healthz`)).status).toBe(200);
    const ready = await fetch(`${base}/readyz`);
    expect(ready.status).toBe(200);
    expect(await ready.text()).toBe("ready\n");
  });

  it("reflection: lists the services and serves their descriptors, imports included", async () => {
    const reflection = new ReflectionClient(`127.0.0.1:${s.grpcPort}`);
    try {
      expect(await reflection.listServices()).toEqual(
        expect.arrayContaining(["apikeys.v1.ApiKeyService", "apikeys.v1.OrganizationService", "envoy.service.auth.v3.Authorization", "grpc.health.v1.Health"]),
      );

      const res = await reflection.fileContainingSymbol("apikeys.v1.ApiKeyService");
      const files = res.fileDescriptorResponse!.fileDescriptorProto.map((b) => fromBinary(FileDescriptorProtoSchema, b));
      const api = files.find((f) => f.name === "apikeys/v1/apikeys.proto");
      const service = api?.service.find((svc) => svc.name === "ApiKeyService");
      expect(service?.method.map((m) => m.name)).toEqual(expect.arrayContaining(["CreateKey", "VerifyKey", "RevokeKey"]));
      // What grpcurl needs to build requests: the messages as compiled, each file's imports, and the imported files.
      expect(api?.messageType.find((m) => m.name === "VerifyKeyRequest")?.field.map((f) => f.name)).toEqual(["key", "required_scopes", "cost"]);
      const remaining = api?.messageType.find((m) => m.name === "VerifyKeyResponse")?.field.find((f) => f.name === "remaining_credits");
      expect(remaining?.proto3Optional).toBe(true);
      expect(api?.dependency).toContain("google/protobuf/timestamp.proto");
      expect(files.find((f) => f.name === "google/protobuf/timestamp.proto")?.messageType.map((m) => m.name)).toEqual(["Timestamp"]);
      // The descriptors link up as a client builds them (as grpcurl does): every import and type resolves.
      const registry = link(files);
      expect(registry.getService("apikeys.v1.ApiKeyService")?.method.verifyKey.output.field.key.message?.typeName).toBe("apikeys.v1.ApiKey");

      const errorDetails = await reflection.fileContainingSymbol("google.rpc.ErrorInfo");
      expect(errorDetails.fileDescriptorResponse?.fileDescriptorProto.length).toBeGreaterThan(0);

      const envoy = await reflection.fileContainingSymbol("envoy.service.auth.v3.Authorization");
      const envoyRegistry = link(envoy.fileDescriptorResponse!.fileDescriptorProto.map((b) => fromBinary(FileDescriptorProtoSchema, b)));
      expect(envoyRegistry.getService("envoy.service.auth.v3.Authorization")?.method.check.input.typeName).toBe("envoy.service.auth.v3.CheckRequest");
    } finally {
      reflection.close();
    }
  });

  it("metrics: RPC histograms by method, code and protocol, verify outcomes, cache, pool and process metrics, no secrets", async () => {
    const { secret, key } = await s.grpc.call("createKey", { organizationId: "org_m", actor: owner, name: "metrics" });
    expect((await s.grpc.call("verifyKey", { key: secret })).code).toBe(VerifyCode.VALID);
    expect((await s.grpc.call("verifyKey", { key: secret })).code).toBe(VerifyCode.VALID);
    expect((await s.connect.verifyKey({ key: secret })).code).toBe(VerifyCode.VALID);
    expect((await s.grpc.call("verifyKey", { key: "sk_not_a_real_key" })).code).toBe(VerifyCode.NOT_FOUND);
    await expect(s.grpc.call("getKey", { organizationId: "org_other", keyId: key!.id, actor: owner })).rejects.toMatchObject({
      code: grpc.status.NOT_FOUND,
    });

    const res = await fetch(`${base}/metrics`);
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toContain("text/plain");
    const text = await res.text();
    const rpc = (method: string, code: string, protocol: string) =>
      sample(text, `apikeys_rpc_duration_seconds_count{service="apikeys.v1.ApiKeyService",method="${method}",code="${code}",protocol="${protocol}"}`);
    expect(rpc("VerifyKey", "OK", "grpc")).toBe(3);
    expect(rpc("VerifyKey", "OK", "connect")).toBe(1);
    expect(rpc("CreateKey", "OK", "grpc")).toBe(1);
    expect(rpc("GetKey", "NOT_FOUND", "grpc")).toBe(1);
    expect(text).toContain('apikeys_rpc_duration_seconds_bucket{le="0.005",service="apikeys.v1.ApiKeyService",method="VerifyKey",code="OK",protocol="grpc"}');

    expect(sample(text, 'apikeys_verify_outcomes_total{code="VALID"}')).toBe(3);
    expect(sample(text, 'apikeys_verify_outcomes_total{code="NOT_FOUND"}')).toBe(1);
    expect(sample(text, 'apikeys_verify_outcomes_total{code="REVOKED"}')).toBe(0);
    expect(sample(text, "apikeys_verify_malformed_keys_total")).toBe(1);
    // The first verification loads the key; the next two may be answered from the cache once its Redis lease is current.
    expect(sample(text, "apikeys_verify_cache_misses_total")).toBeGreaterThanOrEqual(1);
    expect(sample(text, "apikeys_verify_cache_hits_total")).toBeGreaterThanOrEqual(0);
    expect(sample(text, "apikeys_verify_cache_entries")).toBeGreaterThanOrEqual(0);
    expect(sample(text, "apikeys_broadcast_published_total")).toEqual(expect.any(Number));
    expect(sample(text, "apikeys_db_pool_max_connections")).toBe(10);
    expect(sample(text, 'apikeys_db_pool_connections{state="idle"}')).toBeGreaterThanOrEqual(1);
    expect(sample(text, "apikeys_db_deadlocks_total")).toBe(0);
    expect(sample(text, "apikeys_last_used_writes_total")).toBeGreaterThanOrEqual(0);
    expect(text).toMatch(/^process_cpu_user_seconds_total \d/m);
    expect(text).toMatch(/^nodejs_eventloop_lag_seconds \d/m);

    expect(text).not.toContain(secret);
    expect(text).not.toContain("sk_not_a_real_key");
    expect(text).not.toContain(key!.id);
  });
});

describe("health follows the database", () => {
  it("is NOT_SERVING (and /readyz 503) while the database does not answer, SERVING again when it does", async () => {
    const store = new MemoryStore();
    let databaseUp = false;
    store.ping = async () => {
      if (!databaseUp) throw new Error("connect ECONNREFUSED 127.0.0.1:3306");
    };
    const s = await startServer({ store, env: { HEALTH_POLL_MS: "100" } });
    const health = new HealthClient(`127.0.0.1:${s.grpcPort}`);
    try {
      expect(await health.check("")).toBe("NOT_SERVING");
      expect(await health.check("apikeys.v1.ApiKeyService")).toBe("NOT_SERVING");
      const ready = await fetch(`http://127.0.0.1:${s.httpPort}/readyz`);
      expect(ready.status).toBe(503);
      expect(await ready.text()).toBe("database unavailable\n");
      // Liveness is the process, not its dependencies: restarting would not bring the database back.
      expect((await fetch(`http://127.0.0.1:${s.httpPort}/healthz`)).status).toBe(200);

      const watch = health.watch("");
      await until(() => watch.statuses.length === 1);
      databaseUp = true;
      await until(() => watch.statuses.length === 2);
      expect(watch.statuses).toEqual(["NOT_SERVING", "SERVING"]);
      expect((await fetch(`http://127.0.0.1:${s.httpPort}/readyz`)).status).toBe(200);

      databaseUp = false;
      await until(() => watch.statuses.length === 3);
      expect(watch.statuses[2]).toBe("NOT_SERVING");
      watch.cancel();
    } finally {
      health.close();
      await s.stop();
    }
  });
});

describe("per-RPC logs", () => {
  it("one line per call with request id, caller, method, code and duration; answered VerifyKey only at debug; never a secret", async () => {
    const lines: Record<string, unknown>[] = [];
    const logger = pino({ level: "debug" }, { write: (line: string) => void lines.push(JSON.parse(line)) });
    const callers = JSON.stringify([{ name: "web", token: "web-token-0123456789abcdef-7Hq2Lm9Zx", allow: ["manage", "verify"] }]);
    const s = await startServer({ store: new MemoryStore(), logger, env: { CALLERS: callers, ALLOW_UNAUTHENTICATED_CALLERS: "" } });
    const auth = () => {
      const md = new grpc.Metadata();
      md.set("authorization", "Bearer web-token-0123456789abcdef-7Hq2Lm9Zx");
      return md;
    };
    try {
      const md = auth();
      md.set("x-request-id", "req-create-1");
      const { secret, key } = await s.grpc.call("createKey", { organizationId: "org_l", actor: owner, name: "logs" }, md);
      await s.grpc.call("verifyKey", { key: secret }, auth());
      await s.grpc.call("verifyKey", { key: "sk_unknownunknownunknownunknownunknown00" }, auth());
      await expect(s.grpc.call("verifyKey", { key: "" }, auth())).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT });
      const stranger = new grpc.Metadata();
      stranger.set("authorization", "Bearer not-a-known-caller-token");
      await expect(s.grpc.call("listKeys", { organizationId: "org_l", actor: owner }, stranger)).rejects.toMatchObject({
        code: grpc.status.UNAUTHENTICATED,
      });
      await s.grpc.call("revokeKey", { organizationId: "org_l", keyId: key!.id, actor: owner }, auth());

      const rpcs = lines.filter((l) => l.msg === "rpc");
      const line = (method: string) => rpcs.filter((l) => l.method === `apikeys.v1.ApiKeyService/${method}`);

      expect(line("CreateKey")).toEqual([
        expect.objectContaining({ level: 30, requestId: "req-create-1", caller: "web", code: "OK", protocol: "grpc", durationMs: expect.any(Number) }),
      ]);
      expect(line("RevokeKey")).toEqual([expect.objectContaining({ level: 30, caller: "web", code: "OK", requestId: expect.stringMatching(/^[0-9a-f-]{36}$/) })]);
      // Answers, valid or not, are debug; a refused request is info; an unknown caller is a warning.
      expect(line("VerifyKey").map((l) => [l.level, l.code])).toEqual([
        [20, "OK"],
        [20, "OK"],
        [30, "INVALID_ARGUMENT"],
      ]);
      expect(line("ListKeys")).toEqual([expect.objectContaining({ level: 40, code: "UNAUTHENTICATED" })]);
      expect(line("ListKeys")[0].caller).toBeUndefined();

      const all = JSON.stringify(lines);
      expect(all).not.toContain(secret);
      expect(all).not.toContain("web-token-0123456789abcdef-7Hq2Lm9Zx");
      expect(all).not.toContain("not-a-known-caller-token");
      expect(all).not.toContain("sk_unknownunknown");
    } finally {
      await s.stop();
    }
  });
});
