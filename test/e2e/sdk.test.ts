// The TypeScript SDK: concurrent verify() calls share one VerifyKeyStream,
// refusals come back as VerifyKey's, and a server restart mid-stream falls
// back to unary calls, then to a new stream.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Role, VerifyCode } from "../../gen/apikeys/v1/apikeys_pb.js";
import { generateSecret } from "../../src/keys/key-format.js";
import { VerifierClient, VerifyError } from "../../src/sdk/index.js";
import { type TestDatabase, freshDatabase } from "../helpers/mysql.js";
import { type TestServer, startServer } from "../helpers/server.js";

const owner = { userId: "u_owner", role: Role.OWNER };

async function until(check: () => boolean, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe("SDK", () => {
  let db: TestDatabase;
  let server: TestServer;
  let sdk: VerifierClient;
  let secrets: string[];

  beforeAll(async () => {
    db = await freshDatabase();
    server = await startServer({ databaseUrl: db.url });
    secrets = await Promise.all(
      Array.from({ length: 10 }, async (_, i) => (await server.connect.createKey({ organizationId: "org_sdk", actor: owner, name: `k${i}`, scopes: ["a:read"] })).secret),
    );
    sdk = new VerifierClient({ address: `127.0.0.1:${server.grpcPort}`, minBackoffMs: 20, maxBackoffMs: 200 });
  });

  afterAll(async () => {
    sdk?.close();
    await server?.stop();
    await db?.drop();
  });

  it("shares one stream between concurrent calls, answering each its own", async () => {
    await until(() => sdk.stats.opened === 1);
    // One call first: the stream is open once an answer came back on it.
    await sdk.verify(secrets[0]);
    const streamed = sdk.stats.streamed;
    const answers = await Promise.all(
      Array.from({ length: 200 }, (_, i) => sdk.verify(i % 3 === 2 ? generateSecret("sk") : secrets[i % 10], { requiredScopes: i % 3 === 1 ? ["b:write"] : [] })),
    );
    answers.forEach((a, i) => expect(a.code).toBe([VerifyCode.VALID, VerifyCode.INSUFFICIENT_SCOPE, VerifyCode.NOT_FOUND][i % 3]));
    expect(sdk.stats.streamed - streamed).toBe(200);
    expect(sdk.stats.opened).toBe(1);
  });

  it("rejects what VerifyKey refuses with its status", async () => {
    await expect(sdk.verify("")).rejects.toMatchObject({ code: 3 });
    await expect(sdk.verify("")).rejects.toBeInstanceOf(VerifyError);
  });

  it("falls back to unary calls when the server restarts mid-stream, then streams again", async () => {
    const port = server.grpcPort;
    // Calls keep coming while the server goes away and comes back on the same port.
    let running = true;
    const failures: unknown[] = [];
    let answered = 0;
    // While no server listens calls fail (UNAVAILABLE); only a batch wholly before the stop or after the restart must not.
    let stoppingAt = Number.POSITIVE_INFINITY;
    let upAt = Number.POSITIVE_INFINITY;
    const load = (async () => {
      while (running) {
        const started = performance.now();
        const results = await Promise.allSettled(secrets.map((s) => sdk.verify(s)));
        const ended = performance.now();
        for (const r of results) {
          if (r.status === "fulfilled") {
            expect(r.value.code).toBe(VerifyCode.VALID);
            answered++;
          } else if (ended < stoppingAt || started > upAt) failures.push(r.reason);
        }
        await new Promise((r) => setTimeout(r, 20));
      }
    })();
    await until(() => answered > 100);
    stoppingAt = performance.now();
    const unaryBefore = sdk.stats.fellBack + sdk.stats.retried;
    await server.stop();
    server = await startServer({ databaseUrl: db.url, env: { GRPC_PORT: String(port) } });
    const opened = sdk.stats.opened;
    // Once the channel has reconnected (its back-off is the SDK's), every call must succeed.
    const before = answered;
    await until(() => answered > before);
    upAt = performance.now();
    // Every call from now on succeeds: over unary calls while the stream is reopened, then on the new stream.
    await until(() => sdk.stats.opened > opened && sdk.stats.streamed > 0);
    const streamedAfter = sdk.stats.streamed;
    await until(() => sdk.stats.streamed > streamedAfter + 100);
    running = false;
    await load;
    expect(failures).toEqual([]);
    expect(sdk.stats.broken).toBeGreaterThan(0);
    // Calls made while the stream was down went unary, or were sent again as unary calls when it broke.
    expect(sdk.stats.fellBack + sdk.stats.retried - unaryBefore).toBeGreaterThan(0);
  }, 150_000);
});
