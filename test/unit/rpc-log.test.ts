import { Writable } from "node:stream";
import { describe, expect, it } from "vitest";
import { generateSecret } from "../../src/keys/key-format.js";
import { createLogger } from "../../src/logger.js";
import { RpcLog } from "../../src/observability/rpc-log.js";

function capture() {
  const lines: string[] = [];
  const stream = new Writable({
    write(chunk, _enc, done) {
      lines.push(...String(chunk).split("\n").filter(Boolean));
      done();
    },
  });
  return { lines, log: new RpcLog(createLogger("debug", stream), new Set(["/apikeys.v1.ApiKeyService/VerifyKey"])) };
}

const headers = (id: string) => ({ get: (name: string) => (name === "x-request-id" ? id : undefined) });

describe("per-RPC log lines", () => {
  it("keep the caller's request id", () => {
    const { lines, log } = capture();
    log.record("/apikeys.v1.ApiKeyService/CreateKey", 0, "grpc", "web", 1.5, headers("req-42"));
    expect(JSON.parse(lines[0])).toMatchObject({ requestId: "req-42", caller: "web", method: "apikeys.v1.ApiKeyService/CreateKey", code: "OK" });
  });

  it("never log a key sent as the request id", () => {
    const { lines, log } = capture();
    const secret = generateSecret("sk");
    log.record("/apikeys.v1.ApiKeyService/CreateKey", 0, "grpc", "web", 1.5, headers(`trace ${secret}`));
    expect(lines).toHaveLength(1);
    expect(lines[0]).not.toContain(secret.slice(3, -4));
    expect(JSON.parse(lines[0]).requestId).toMatch(/^[0-9a-f-]{36}$/);
  });
});
