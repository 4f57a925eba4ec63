// The call pipeline both ports share (src/transport/pipeline.ts), driven
// through each port's own reading of its calls: a grpc-js call and a
// connect-node handler context.
import { Code, ConnectError, createHandlerContext } from "@connectrpc/connect";
import { Metadata, type ServerUnaryCall, type ServiceError, status } from "@grpc/grpc-js";
import { describe, expect, it } from "vitest";
import { ApiKeyService } from "../../gen/apikeys/v1/apikeys_pb.js";
import { ApiError, Status } from "../../src/keys/errors.js";
import { CallerAuth, digest } from "../../src/transport/auth.js";
import type { ServiceBinding } from "../../src/transport/bindings.js";
import { GRPC_CALLS } from "../../src/transport/grpc-server.js";
import { CONNECT_CALLS } from "../../src/transport/http-server.js";
import { type CallAccess, UNDECODABLE, invoker } from "../../src/transport/pipeline.js";

const TOKEN = "pipeline-test-token-0123456789-ABCDEFGH";
const verifyKey = ApiKeyService.method.verifyKey;

function setup() {
  const handled: unknown[] = [];
  const finished: { code: number; caller: string; protocol: string }[] = [];
  const binding = {
    service: ApiKeyService,
    handlers: {
      verifyKey: (req: unknown) => {
        handled.push(req);
        if ((req as { key: string }).key === "boom") throw new ApiError(Status.UNAVAILABLE, "DEPENDENCY_UNAVAILABLE", "down");
        return { valid: true };
      },
    },
    access: () => "verify",
  } as unknown as ServiceBinding;
  const auth = new CallerAuth([{ name: "gw", tokenSha256: digest(TOKEN), allow: ["verify"] } as never], false);
  const options = {
    auth,
    onInternal: () => {},
    observer: { finished: (_path: string, code: number, _at: number, caller: string, protocol: string) => finished.push({ code, caller, protocol }) },
  };
  const run = <C, E>(access: CallAccess<C, E>, call: C, request: unknown) =>
    new Promise<{ error: E | null; answer?: unknown }>((resolve) =>
      invoker(access, binding, verifyKey, options)(call, request, (error, answer) => resolve({ error, answer })),
    );
  return { handled, finished, run };
}

function grpcCall(opts: { token?: string; deadline?: number; cancelled?: boolean }): ServerUnaryCall<unknown, unknown> {
  const metadata = new Metadata();
  if (opts.token) metadata.set("authorization", `Bearer ${opts.token}`);
  return {
    metadata,
    cancelled: opts.cancelled ?? false,
    getDeadline: () => opts.deadline ?? Number.POSITIVE_INFINITY,
    getAuthContext: () => ({}),
  } as unknown as ServerUnaryCall<unknown, unknown>;
}

function connectCall(opts: { token?: string; timeoutMs?: number; aborted?: boolean }) {
  const requestSignal = new AbortController();
  if (opts.aborted) requestSignal.abort();
  const ctx = createHandlerContext({
    service: ApiKeyService,
    method: verifyKey,
    protocolName: "connect",
    requestMethod: "POST",
    url: "http://localhost/apikeys.v1.ApiKeyService/VerifyKey",
    timeoutMs: opts.timeoutMs,
    requestSignal: requestSignal.signal,
    requestHeader: opts.token ? { authorization: `Bearer ${opts.token}` } : {},
  });
  return ctx;
}

const grpcCode = (e: Partial<ServiceError> | null) => e?.code;
const connectCode = (e: ConnectError | null) => e?.code;

describe("the call pipeline, on both ports alike", () => {
  it("answers an authenticated call and tells the observer", async () => {
    const { handled, finished, run } = setup();
    expect((await run(GRPC_CALLS, grpcCall({ token: TOKEN }), { key: "k" })).answer).toEqual({ valid: true });
    expect((await run(CONNECT_CALLS, connectCall({ token: TOKEN }), { key: "k" })).answer).toEqual({ valid: true });
    expect(handled).toHaveLength(2);
    expect(finished).toEqual([
      { code: 0, caller: "gw", protocol: "grpc" },
      { code: 0, caller: "gw", protocol: "connect" },
    ]);
  });

  it("refuses an unknown caller before it looks at the request", async () => {
    const { handled, run } = setup();
    expect(grpcCode((await run(GRPC_CALLS, grpcCall({}), UNDECODABLE)).error)).toBe(status.UNAUTHENTICATED);
    expect(connectCode((await run(CONNECT_CALLS, connectCall({ token: "wrong-token-wrong-token-wrong-token" }), { key: "k" })).error)).toBe(
      Code.Unauthenticated,
    );
    expect(handled).toHaveLength(0);
  });

  it("does not start a call whose deadline passed while it waited", async () => {
    const { handled, finished, run } = setup();
    expect(grpcCode((await run(GRPC_CALLS, grpcCall({ token: TOKEN, deadline: Date.now() - 1 }), { key: "k" })).error)).toBe(status.DEADLINE_EXCEEDED);
    expect(connectCode((await run(CONNECT_CALLS, connectCall({ token: TOKEN, timeoutMs: -1 }), { key: "k" })).error)).toBe(Code.DeadlineExceeded);
    expect(handled).toHaveLength(0);
    expect(finished.map((f) => f.code)).toEqual([Status.DEADLINE_EXCEEDED, Status.DEADLINE_EXCEEDED]);
  });

  it("does not start a call the client cancelled", async () => {
    const { handled, run } = setup();
    expect(grpcCode((await run(GRPC_CALLS, grpcCall({ token: TOKEN, cancelled: true }), { key: "k" })).error)).toBe(status.CANCELLED);
    expect(connectCode((await run(CONNECT_CALLS, connectCall({ token: TOKEN, aborted: true }), { key: "k" })).error)).toBe(Code.Canceled);
    expect(handled).toHaveLength(0);
  });

  it("maps a domain error to each port's error, with the same code", async () => {
    const { finished, run } = setup();
    const grpc = (await run(GRPC_CALLS, grpcCall({ token: TOKEN }), { key: "boom" })).error;
    const connect = (await run(CONNECT_CALLS, connectCall({ token: TOKEN }), { key: "boom" })).error;
    expect(grpcCode(grpc)).toBe(status.UNAVAILABLE);
    expect(connect).toBeInstanceOf(ConnectError);
    expect(connectCode(connect)).toBe(Code.Unavailable);
    expect(finished.map((f) => f.code)).toEqual([Status.UNAVAILABLE, Status.UNAVAILABLE]);
  });
});
