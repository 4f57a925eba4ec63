// A client in another language, generated from the proto as its users would:
// Debian's protoc and grpc_python_plugin write a Python client into a temp
// directory, and test/python/smoke.py (Debian's python3 with python3-grpcio)
// runs create → verify → revoke → verify against a real server's gRPC port.
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type TestServer, startServer } from "../helpers/server.js";

const run = promisify(execFile);

// Debian's python3, not a pyenv one on PATH: python3-grpcio is installed for it.
const PYTHON = "/usr/bin/python3";
const PROTOC = "/usr/bin/protoc";
const GRPC_PYTHON_PLUGIN = "/usr/bin/grpc_python_plugin";
const TOOLS = [PROTOC, GRPC_PYTHON_PLUGIN, PYTHON];
const TOKEN = "python-caller-token-0123456789-7Hq2Lm9Zx";

// CI installs the tools (.ci/run), so there a missing one is a failure, not a skip.
const missing = TOOLS.filter((t) => !existsSync(t));
const skip = missing.length > 0 && !process.env.CI;
if (skip) {
  console.warn(`skipping the Python client test: ${missing.join(", ")} not installed (apt-get install protobuf-compiler protobuf-compiler-grpc libprotobuf-dev python3-grpcio python3-protobuf)`);
}

describe.skipIf(skip)("Python client generated with protoc", () => {
  let s: TestServer;
  let out: string;

  beforeAll(async () => {
    out = await mkdtemp(path.join(tmpdir(), "apikeys-python-"));
    await run(PROTOC, [
      "-I",
      "proto",
      `--python_out=${out}`,
      `--grpc_python_out=${out}`,
      `--plugin=protoc-gen-grpc_python=${GRPC_PYTHON_PLUGIN}`,
      "proto/apikeys/v1/apikeys.proto",
      // Imported by VerifyKeyStream's answers; Python has no google.rpc module without googleapis-common-protos.
      "proto/google/rpc/status.proto",
    ]);
    s = await startServer({ env: { CALLERS: JSON.stringify([{ name: "python", token: TOKEN, allow: ["manage", "verify"] }]) } });
  });
  afterAll(async () => {
    await s?.stop();
    if (out) await rm(out, { recursive: true, force: true });
  });

  it("creates, verifies, revokes and verifies again over gRPC", async () => {
    const { stdout } = await run(PYTHON, ["test/python/smoke.py", `127.0.0.1:${s.grpcPort}`], {
      env: { PATH: process.env.PATH, PYTHONPATH: out, APIKEYS_TOKEN: TOKEN },
      timeout: 20_000,
    });
    const steps = stdout.trim().split("\n").map((line) => JSON.parse(line));
    expect(steps).toEqual([
      { step: "created", key_id: expect.stringMatching(/^key_/), prefix: "sk", has_secret: true },
      { step: "verified", valid: true, code: "VERIFY_CODE_VALID", organization: "org_py", user: "py_user", role: "ROLE_OWNER" },
      { step: "revoked", state: "KEY_STATE_REVOKED", revoked_by: "py_user" },
      { step: "verified", valid: false, code: "VERIFY_CODE_REVOKED" },
      { step: "error", code: "NOT_FOUND", message: "key key_missing not found" },
    ]);
  });
});
