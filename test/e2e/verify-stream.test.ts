// VerifyKeyStream on the gRPC port: answers matched by correlation id, the
// same outcomes and refusals as VerifyKey, the caller's permission checked,
// cancellation and deadlines as gRPC users expect, a bounded number of
// requests read ahead of a client that stops reading, and no late accept
// after RevokeKey returned on another instance.
import { create } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import * as http2 from "node:http2";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  ApiKeyService,
  Role,
  VerifyCode,
  type VerifyKeyStreamRequest,
  VerifyKeyStreamRequestSchema,
  type VerifyKeyStreamResponse,
} from "../../gen/apikeys/v1/apikeys_pb.js";
import { Status } from "../../src/keys/errors.js";
import { serviceDefinition } from "../../src/transport/grpc-server.js";
import { type TestDatabase, freshDatabase } from "../helpers/mysql.js";
import { TestRedis } from "../helpers/redis.js";
import { type TestServer, startServer } from "../helpers/server.js";

const owner = { userId: "u_owner", role: Role.OWNER };
const definition = serviceDefinition(ApiKeyService).verifyKeyStream;
const Client = grpc.makeGenericClientConstructor({}, "ApiKeyService");

type Stream = grpc.ClientDuplexStream<VerifyKeyStreamRequest, VerifyKeyStreamResponse>;

function openStream(port: number, options: { token?: string; deadline?: number } = {}): { client: grpc.Client; stream: Stream } {
  const client = new Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
  const metadata = new grpc.Metadata();
  if (options.token) metadata.set("authorization", `Bearer ${options.token}`);
  const stream = client.makeBidiStreamRequest(
    definition.path,
    definition.requestSerialize as (m: VerifyKeyStreamRequest) => Buffer,
    definition.responseDeserialize as (b: Buffer) => VerifyKeyStreamResponse,
    metadata,
    options.deadline === undefined ? {} : { deadline: options.deadline },
  );
  return { client, stream };
}

function request(correlationId: number, key: string, requiredScopes: string[] = []): VerifyKeyStreamRequest {
  return create(VerifyKeyStreamRequestSchema, { correlationId, request: { key, requiredScopes } });
}

/** Resolves with the stream's final status (OK or the error's). */
function finished(stream: Stream): Promise<grpc.StatusObject | grpc.ServiceError> {
  return new Promise((resolve) => {
    stream.on("error", resolve);
    stream.on("status", (s: grpc.StatusObject) => {
      if (s.code === grpc.status.OK) resolve(s);
    });
  });
}

async function until(check: () => boolean, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await new Promise((r) => setTimeout(r, 10));
  }
}

const verifications = (s: TestServer) => s.app.verifier.stats.byCode.reduce((a, b) => a + b, 0);

describe("VerifyKeyStream", () => {
  let db: TestDatabase;
  let redis: TestRedis;
  let a: TestServer;
  let b: TestServer;
  let secret: string;

  beforeAll(async () => {
    db = await freshDatabase();
    redis = await TestRedis.start();
    const env = {
      REDIS_URL: redis.url,
      CACHE_LEASE_MS: "1000",
      CALLERS: JSON.stringify([
        { name: "web", token: "web-token-4bd1e0c9a7f2-Xq81LmZr0pWc7tYd", allow: ["manage", "verify"] },
        { name: "gateway", token: "gateway-token-77c0a91e3b-Kd93PqLs02xVb6Zn", allow: ["verify"] },
        { name: "backend", token: "backend-token-1c2d3e4f5a-Tw47HjNm18cRe5Uy", allow: ["manage"] },
      ]),
      ALLOW_UNAUTHENTICATED_CALLERS: "false",
      TEST_CALLER_TOKEN: "web-token-4bd1e0c9a7f2-Xq81LmZr0pWc7tYd",
    };
    a = await startServer({ databaseUrl: db.url, env });
    b = await startServer({ databaseUrl: db.url, env });
    await until(() => [a, b].every((s) => s.app.cache!.isTrusted()));
    secret = (await a.connect.createKey({ organizationId: "org_s", actor: owner, name: "streamed", scopes: ["docs:read"] })).secret;
  });

  afterAll(async () => {
    await Promise.all([a, b].map((s) => s?.stop()));
    await redis?.kill();
    await db?.drop();
  });

  it("answers every request under its correlation id, as VerifyKey would", async () => {
    const { client, stream } = openStream(b.grpcPort, { token: "gateway-token-77c0a91e3b-Kd93PqLs02xVb6Zn" });
    const answers = new Map<number, VerifyKeyStreamResponse>();
    stream.on("data", (m: VerifyKeyStreamResponse) => answers.set(m.correlationId, m));
    const done = finished(stream);
    const unknown = `${secret.slice(0, -10)}AAAAAAAAAA`;
    stream.write(request(7, secret));
    stream.write(request(0, secret, ["docs:write"]));
    stream.write(request(4_000_000_000, "sk_not_a_key"));
    stream.write(request(9, ""));
    stream.write(request(10, unknown));
    stream.write(create(VerifyKeyStreamRequestSchema, { correlationId: 11 }));
    stream.end();
    expect((await done).code).toBe(grpc.status.OK);
    client.close();

    expect([...answers.keys()].sort((x, y) => x - y)).toEqual([0, 7, 9, 10, 11, 4_000_000_000]);
    const code = (id: number) => {
      const r = answers.get(id)!.result;
      return r.case === "response" ? r.value.code : undefined;
    };
    expect(code(7)).toBe(VerifyCode.VALID);
    const valid = answers.get(7)!.result;
    expect(valid.case === "response" && valid.value.principal?.organizationId).toBe("org_s");
    expect(code(0)).toBe(VerifyCode.INSUFFICIENT_SCOPE);
    expect(code(4_000_000_000)).toBe(VerifyCode.NOT_FOUND);
    expect(code(10)).toBe(VerifyCode.NOT_FOUND);
    // What VerifyKey refuses with a status is an answer carrying it; the stream goes on.
    for (const id of [9, 11]) {
      const r = answers.get(id)!.result;
      expect(r.case).toBe("error");
      expect(r.case === "error" && r.value.code).toBe(Status.INVALID_ARGUMENT);
    }
    // The answer's bytes are VerifyKey's.
    const unary = await b.grpc.call("verifyKey", { key: secret }, bearer("gateway-token-77c0a91e3b-Kd93PqLs02xVb6Zn"));
    expect(valid.case === "response" && valid.value).toEqual(unary);
  });

  it("refuses a caller without verify, and one without credentials", async () => {
    for (const [token, code] of [
      ["backend-token-1c2d3e4f5a-Tw47HjNm18cRe5Uy", grpc.status.PERMISSION_DENIED],
      [undefined, grpc.status.UNAUTHENTICATED],
    ] as const) {
      const { client, stream } = openStream(b.grpcPort, { token });
      let answered = 0;
      stream.on("data", () => answered++);
      const done = finished(stream);
      stream.write(request(1, secret));
      expect((await done).code).toBe(code);
      expect(answered).toBe(0);
      client.close();
    }
  });

  it("ends with DEADLINE_EXCEEDED at the stream's deadline, answering until then", async () => {
    const { client, stream } = openStream(b.grpcPort, { token: "gateway-token-77c0a91e3b-Kd93PqLs02xVb6Zn", deadline: Date.now() + 400 });
    let answered = 0;
    stream.on("data", () => answered++);
    const done = finished(stream);
    stream.write(request(1, secret));
    const status = await done;
    expect(status.code).toBe(grpc.status.DEADLINE_EXCEEDED);
    expect(answered).toBe(1);
    client.close();
  });

  it("stops on cancellation, and the server answers nothing more on it", async () => {
    const { client, stream } = openStream(b.grpcPort, { token: "gateway-token-77c0a91e3b-Kd93PqLs02xVb6Zn" });
    let answered = 0;
    stream.on("data", () => answered++);
    const done = finished(stream);
    for (let i = 0; i < 100; i++) stream.write(request(i, secret));
    await until(() => answered === 100);
    stream.cancel();
    expect((await done).code).toBe(grpc.status.CANCELLED);
    const before = verifications(b);
    await new Promise((r) => setTimeout(r, 100));
    expect(verifications(b)).toBe(before);
    client.close();
  });

  it("reads a bounded number of requests ahead of a client that stops reading", async () => {
    const total = 10_000;
    // A bare HTTP/2 client, so that "not reading" means what it does on the wire: no
    // WINDOW_UPDATE for the answers (grpc-js's client keeps reading into its own buffers).
    const session = http2.connect(`http://127.0.0.1:${b.grpcPort}`);
    const stream = session.request({
      ":method": "POST",
      ":path": definition.path,
      "content-type": "application/grpc",
      te: "trailers",
      authorization: "Bearer gateway-token-77c0a91e3b-Kd93PqLs02xVb6Zn",
    });
    stream.pause();
    const start = verifications(b);
    const frames: Buffer[] = [];
    for (let i = 0; i < total; i++) {
      const body = definition.requestSerialize(request(i, secret));
      const frame = Buffer.alloc(5 + body.length);
      frame.writeUInt32BE(body.length, 1);
      body.copy(frame, 5);
      frames.push(frame);
    }
    stream.write(Buffer.concat(frames));
    await until(() => verifications(b) > start);
    // Give the server every chance to read on: half a second without a change.
    let seen = -1;
    for (let i = 0; i < 40 && verifications(b) !== seen; i++) {
      seen = verifications(b);
      await new Promise((r) => setTimeout(r, 500));
    }
    const readAhead = verifications(b) - start;
    // Answers fill the HTTP/2 window (64 KB, ~300 answers), the stream's write buffer and
    // STREAM_MAX_IN_FLIGHT, then the server reads no more: a few hundred of the 10,000 sent.
    expect(readAhead).toBeLessThan(2000);
    // Reading again lets the server read on; the client then gives up on the rest.
    let bytes = 0;
    stream.on("data", (chunk: Buffer) => (bytes += chunk.length));
    stream.resume();
    await until(() => verifications(b) - start > readAhead + 1000, 20_000);
    expect(bytes).toBeGreaterThan(readAhead * 100);
    stream.close(http2.constants.NGHTTP2_CANCEL);
    session.close();
  }, 40_000);

  it("never accepts a key once RevokeKey returned on another instance", async () => {
    const { key, secret: revoked } = await a.connect.createKey({ organizationId: "org_s", actor: owner, name: "raced" });
    const { client, stream } = openStream(b.grpcPort, { token: "gateway-token-77c0a91e3b-Kd93PqLs02xVb6Zn" });
    // Verifications sent after RevokeKey returned have ids >= this.
    let firstAfterRevoke = Number.POSITIVE_INFINITY;
    const late: number[] = [];
    let valid = 0;
    let answered = 0;
    stream.on("data", (m: VerifyKeyStreamResponse) => {
      answered++;
      if (m.result.case !== "response") throw new Error(`unexpected error answer ${m.result.value?.message}`);
      if (m.result.value.valid) {
        valid++;
        if (m.correlationId >= firstAfterRevoke) late.push(m.correlationId);
      }
    });
    const done = finished(stream);
    let id = 0;
    let sending = true;
    const sender = (async () => {
      while (sending) {
        // A thousand in flight at most, so every answer comes back within the test.
        if (id - answered < 1000) for (let i = 0; i < 50; i++) stream.write(request(id++, revoked));
        await new Promise((r) => setTimeout(r, 1));
      }
    })();
    await until(() => valid > 200, 30_000);
    await a.connect.revokeKey({ organizationId: "org_s", keyId: key!.id, actor: owner });
    firstAfterRevoke = id;
    await until(() => id > firstAfterRevoke + 2000, 30_000);
    sending = false;
    await sender;
    stream.end();
    expect((await done).code).toBe(grpc.status.OK);
    client.close();
    expect(answered).toBe(id);
    expect(late).toEqual([]);
  }, 90_000);

  it("works with connect-node's gRPC client", async () => {
    const transport = createGrpcTransport({
      baseUrl: `http://127.0.0.1:${b.grpcPort}`,
      interceptors: [(next) => (req) => (req.header.set("authorization", "Bearer gateway-token-77c0a91e3b-Kd93PqLs02xVb6Zn"), next(req))],
    });
    const c = createClient(ApiKeyService, transport);
    async function* requests() {
      yield { correlationId: 1, request: { key: secret } };
      yield { correlationId: 2, request: { key: "" } };
    }
    const got: VerifyKeyStreamResponse[] = [];
    for await (const m of c.verifyKeyStream(requests())) got.push(m);
    expect(got.map((m) => [m.correlationId, m.result.case])).toEqual(
      expect.arrayContaining([
        [1, "response"],
        [2, "error"],
      ]),
    );
  });
});

function bearer(token: string): grpc.Metadata {
  const m = new grpc.Metadata();
  m.set("authorization", `Bearer ${token}`);
  return m;
}
