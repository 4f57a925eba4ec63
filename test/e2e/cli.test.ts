// The `apikeys` CLI as a user runs it: the package's bin as a child process
// against a real server (MariaDB, Redis), reading what it prints and its exit
// codes. The confirmation prompt needs a terminal, so that one case drives the
// CLI in-process with a stdin that says it is one.
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { PassThrough } from "node:stream";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { KeyState, Role, VerifyCode } from "../../gen/apikeys/v1/apikeys_pb.js";
import { EXIT } from "../../src/cli/exit-codes.js";
import { run } from "../../src/cli/program.js";
import { type TestServer, startServer } from "../helpers/server.js";

const CLI_TOKEN = "cli-caller-token-0123456789-7Hq2Lm9Zx";
const VERIFY_ONLY_TOKEN = "verify-only-token-0123456789-7Hq2Lm9Zx";
const TENANT_TOKEN = "tenant-cli-token-0123456789-7Hq2Lm9Zx";
const CALLERS = JSON.stringify([
  { name: "cli", token: CLI_TOKEN, allow: ["manage", "verify"] },
  { name: "gateway", token: VERIFY_ONLY_TOKEN, allow: ["verify"] },
  { name: "tenant", token: TENANT_TOKEN, allow: ["manage", "verify"], organizations: ["org_tenant"] },
]);
const BIN = JSON.parse(readFileSync("package.json", "utf8")).bin.apikeys as string;
const owner = { userId: "cli", role: Role.OWNER };

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the bin with a clean environment: only what the test passes. */
function cli(args: string[], options: { env?: Record<string, string>; input?: string } = {}): Promise<Result> {
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("APIKEYS_")));
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], { env: { ...env, ...options.env }, stdio: ["pipe", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d) => (stdout += d));
    child.stderr.on("data", (d) => (stderr += d));
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, stdout, stderr }));
    child.stdin.end(options.input ?? "");
  });
}

const SECRET_LINE = /^ {4}(\S+)$/m;

describe("apikeys CLI", () => {
  let s: TestServer;
  let env: Record<string, string>;

  beforeAll(async () => {
    s = await startServer({ env: { CALLERS, TEST_CALLER_TOKEN: CLI_TOKEN } });
    env = { APIKEYS_URL: `http://127.0.0.1:${s.httpPort}`, APIKEYS_TOKEN: CLI_TOKEN };
  });
  afterAll(async () => {
    await s?.stop();
  });

  it("creates a key, prints its secret once and clearly, and verifies it (key from stdin)", async () => {
    const created = await cli(["create", "--org", "org_cli", "--name", "ci deploys", "--scopes", "documents:read, documents:list"], { env });
    expect(created.code).toBe(EXIT.OK);
    expect(created.stdout).toMatch(/^Created key_\S+ "ci deploys" in org_cli, never expires\.$/m);
    expect(created.stdout).toContain("shown only this once");
    const secret = SECRET_LINE.exec(created.stdout)?.[1];
    expect(secret).toMatch(/^sk_[0-9A-Za-z]{38}$/);

    const valid = await cli(["verify", "-", "--scope", "documents:read"], { env, input: `${secret}\n` });
    expect(valid.code).toBe(EXIT.OK);
    expect(valid.stdout).toMatch(/^valid: key_\S+ "ci deploys" in org_cli\n {2}acts as cli \(owner\), scopes: documents:read, documents:list\n$/);
    expect(valid.stdout + valid.stderr).not.toContain(secret!.slice(3));

    const lacking = await cli(["verify", secret!, "--scope", "documents:write"], { env });
    expect(lacking.code).toBe(EXIT.INVALID_KEY);
    expect(lacking.stdout).toMatch(/^not valid: INSUFFICIENT_SCOPE/);
  });

  it("takes --expires, --project and --prefix, prints --json, and lists keys as a readable table", async () => {
    const before = Date.now();
    const created = await cli(["create", "--org", "org_list", "--name", "expiring", "--project", "proj_1", "--prefix", "trv_ak", "--expires", "30d", "--json"], { env });
    const after = Date.now();
    expect(created.code).toBe(EXIT.OK);
    const body = JSON.parse(created.stdout);
    expect(body.secret).toMatch(/^trv_ak_/);
    expect(body.key).toMatchObject({ projectId: "proj_1", prefix: "trv_ak", createdBy: "cli", state: "KEY_STATE_ACTIVE" });
    // 30 days from when the service handled the call, which is between these two readings.
    const expireTime = Date.parse(body.key.expireTime);
    expect(expireTime).toBeGreaterThanOrEqual(before + 30 * 86_400_000 - 1000);
    expect(expireTime).toBeLessThanOrEqual(after + 30 * 86_400_000);

    const { key: used, secret } = await s.connect.createKey({ organizationId: "org_list", actor: { userId: "u_2", role: Role.ADMIN }, name: "used" });
    expect((await s.connect.verifyKey({ key: secret })).valid).toBe(true);

    const list = await cli(["list", "--org", "org_list"], { env });
    expect(list.code).toBe(EXIT.OK);
    const [header, ...rows] = list.stdout.trimEnd().split("\n");
    expect(header.split(/\s{2,}/)).toEqual(["ID", "NAME", "PREVIEW", "CREATED", "CREATED BY", "LAST USED", "STATUS"]);
    // Newest first; relative times; last used is tracked in memory, so it shows before it is written.
    const recently = expect.stringMatching(/^(just now|\d+ seconds ago)$/);
    expect(rows[0].split(/\s{2,}/)).toEqual([used!.id, "used", used!.preview, recently, "u_2", expect.stringMatching(/^(just now|\d+ seconds ago|never)$/), "active"]);
    expect(rows[1].split(/\s{2,}/)).toEqual([body.key.id, "expiring", body.key.preview, recently, "cli", "never", "active, expires in 4 weeks"]);
    expect(list.stdout).not.toContain(secret.slice(3));
  });

  it("lists the first page, or every page with --all-pages", async () => {
    for (let i = 0; i < 51; i++) await s.connect.createKey({ organizationId: "org_many", actor: owner, name: `key ${i}` });
    const first = await cli(["list", "--org", "org_many"], { env });
    expect(first.stdout.trimEnd().split("\n")).toHaveLength(1 + 50);
    expect(first.stderr).toContain("--all-pages");
    const all = await cli(["list", "--org", "org_many", "--all-pages", "--json"], { env });
    const keys = JSON.parse(all.stdout).keys as { name: string }[];
    expect(keys).toHaveLength(51);
    expect(new Set(keys.map((k) => k.name)).size).toBe(51);
  });

  it("revokes only with --yes when stdin is not a terminal, then the key verifies as REVOKED", async () => {
    const { key, secret } = await s.connect.createKey({ organizationId: "org_cli", actor: owner, name: "to revoke" });
    const refused = await cli(["revoke", key!.id, "--org", "org_cli"], { env });
    expect(refused.code).toBe(EXIT.USAGE);
    expect(refused.stderr).toContain("refusing to revoke without --yes");
    expect((await s.connect.getKey({ organizationId: "org_cli", keyId: key!.id, actor: owner })).key?.state).toBe(KeyState.ACTIVE);

    const revoked = await cli(["revoke", key!.id, "--org", "org_cli", "--yes", "--reason", "leaked in a log"], { env });
    expect(revoked.code).toBe(EXIT.OK);
    expect(revoked.stdout).toMatch(new RegExp(`^Revoked ${key!.id} "to revoke"`));
    expect((await s.connect.getKey({ organizationId: "org_cli", keyId: key!.id, actor: owner })).key?.revokeReason).toBe("leaked in a log");

    // Over the gRPC port this time.
    const verified = await cli(["--url", `grpc://127.0.0.1:${s.grpcPort}`, "verify", secret], { env });
    expect(verified.code).toBe(EXIT.INVALID_KEY);
    expect(verified.stdout).toMatch(/^not valid: REVOKED/);
  });

  it("rotates with a grace period: the new secret is printed once and both work until the grace ends", async () => {
    const { key, secret: old } = await s.connect.createKey({ organizationId: "org_cli", actor: owner, name: "rotating" });
    const rotated = await cli(["rotate", key!.id, "--org", "org_cli", "--grace", "1h"], { env });
    expect(rotated.code).toBe(EXIT.OK);
    expect(rotated.stdout).toMatch(/The previous secret keeps working until .* UTC \(in 59 minutes\)/);
    const fresh = SECRET_LINE.exec(rotated.stdout)?.[1];
    expect(fresh).toMatch(/^sk_/);
    expect(fresh).not.toBe(old);
    expect((await s.connect.verifyKey({ key: fresh! })).code).toBe(VerifyCode.VALID);
    expect((await s.connect.verifyKey({ key: old })).code).toBe(VerifyCode.VALID);
  });

  it("reports errors as status, message and reason, with distinct exit codes and no stack trace", async () => {
    const missing = await cli(["revoke", "key_missing", "--org", "org_cli", "--yes"], { env });
    expect(missing.code).toBe(EXIT.NOT_FOUND);
    expect(missing.stderr).toBe("apikeys: NOT_FOUND: key key_missing not found (reason: KEY_NOT_FOUND)\n");

    const notAllowed = await cli(["create", "--org", "org_cli", "--name", "x"], { env: { ...env, APIKEYS_TOKEN: VERIFY_ONLY_TOKEN } });
    expect(notAllowed.code).toBe(EXIT.NOT_ALLOWED);
    expect(notAllowed.stderr).toMatch(/^apikeys: PERMISSION_DENIED: .*\(reason: CALLER_NOT_ALLOWED\)\n$/);
    expect(notAllowed.stderr).not.toContain(VERIFY_ONLY_TOKEN);

    const asJson = await cli(["--json", "--role", "viewer", "--user", "u_viewer", "create", "--org", "org_cli", "--name", "x"], { env });
    expect(asJson.code).toBe(EXIT.NOT_ALLOWED);
    expect(JSON.parse(asJson.stderr)).toEqual({ error: { code: "PERMISSION_DENIED", message: expect.stringContaining("needs role member"), reason: "ROLE_TOO_LOW" } });

    const unreachable = await cli(["list", "--org", "org_cli"], { env: { APIKEYS_URL: "http://127.0.0.1:1" } });
    expect(unreachable.code).toBe(EXIT.UNAVAILABLE);
    expect(unreachable.stderr).toMatch(/^apikeys: UNAVAILABLE: /);

    const usage = await cli(["create", "--org", "org_cli", "--name", "x", "--expires", "soon"], { env });
    expect(usage.code).toBe(EXIT.USAGE);
    expect(usage.stderr).toContain('--expires: "soon" is not a duration');

    for (const r of [missing, notAllowed, unreachable, usage]) expect(r.stderr).not.toMatch(/^\s+at /m);
  });

  it("exits NOT_ALLOWED (4) when its caller may not act in the organization, and verifies another's key as not valid", async () => {
    const tenant = { ...env, APIKEYS_TOKEN: TENANT_TOKEN };
    expect((await cli(["create", "--org", "org_tenant", "--name", "mine"], { env: tenant })).code).toBe(EXIT.OK);
    for (const args of [["create", "--org", "org_cli", "--name", "x"], ["list", "--org", "org_cli"], ["revoke", "key_x", "--org", "org_cli", "--yes"]]) {
      const denied = await cli(args, { env: tenant });
      expect(denied.code, args[0]).toBe(EXIT.NOT_ALLOWED);
      expect(denied.stderr).toMatch(/^apikeys: PERMISSION_DENIED: caller "tenant" may not act in this organization .*\(reason: ORGANIZATION_NOT_ALLOWED\)\n$/);
    }
    const { secret } = await s.connect.createKey({ organizationId: "org_cli", actor: owner, name: "not theirs" });
    const foreign = await cli(["verify", secret], { env: tenant });
    expect([foreign.code, foreign.stdout]).toEqual([EXIT.INVALID_KEY, "not valid: NOT_FOUND\n"]);
  });

  it("escapes control characters in names, ids and messages in every human-readable output", async () => {
    // What the service lets through in a name: C1 CSI (ESC [ on many terminals) to clear the screen, a carriage
    // return and a line feed to fake a line of output, DEL, a right-to-left override to reverse what follows.
    const evil = "ok\u009b2J\r\nRevoked key_all.\x7f\u202etxt.exe\u0085";
    const { key, secret } = await s.connect.createKey({ organizationId: "org_escape", actor: owner, name: evil });
    const escaped = "ok\\x9b2J\\x0d\\x0aRevoked key_all.\\x7f\\u202etxt.exe\\x85";
    const outputs = [
      (await cli(["list", "--org", "org_escape"], { env })).stdout,
      (await cli(["verify", secret], { env })).stdout,
      (await cli(["rotate", key!.id, "--org", "org_escape"], { env })).stdout,
      (await cli(["revoke", key!.id, "--org", "org_escape", "--yes"], { env })).stdout,
      (await cli(["create", "--org", "org_escape", "--name", evil], { env })).stdout,
      // An organization id the service refuses, quoted back in its error message.
      (await cli(["list", "--org", "org\x1b[31m"], { env })).stderr,
    ];
    for (const out of outputs) expect(out).not.toMatch(/[\x00-\x09\x0b-\x1f\x7f-\x9f\u202e]/);
    expect(outputs[0]).toContain("ok\\x9b2J\\x0d\\x0aRevoked key_");
    for (const out of outputs.slice(1, 5)) expect(out).toContain(escaped);
    // --json is for programs: exact, JSON-escaped.
    const json = JSON.parse((await cli(["--json", "list", "--org", "org_escape", "--show-revoked"], { env })).stdout) as { keys: { name: string }[] };
    expect(json.keys.map((k) => k.name)).toContain(evil);
  });

  it("asks for confirmation on a terminal: 'n' keeps the key, 'y' revokes it", async () => {
    const { key } = await s.connect.createKey({ organizationId: "org_cli", actor: owner, name: "asked about" });
    const ask = async (answer: string) => {
      const stdin = Object.assign(new PassThrough(), { isTTY: true });
      let stdout = "";
      let stderr = "";
      const io = { stdin, stdout: { write: (t: string) => (stdout += t) }, stderr: { write: (t: string) => (stderr += t) }, now: Date.now };
      const done = run(["--url", env.APIKEYS_URL, "--token", CLI_TOKEN, "revoke", key!.id, "--org", "org_cli"], io);
      // Answer once the question is on screen, as a person would.
      while (!stderr.includes("[y/N]")) await new Promise((r) => setTimeout(r, 10));
      stdin.write(`${answer}\n`);
      return { code: await done, stdout, stderr };
    };

    const declined = await ask("n");
    expect(declined.stderr).toContain(`Revoke ${key!.id} "asked about" (${key!.preview}) in org_cli? This cannot be undone. [y/N]`);
    expect(declined.code).toBe(EXIT.NOT_CONFIRMED);
    expect((await s.connect.getKey({ organizationId: "org_cli", keyId: key!.id, actor: owner })).key?.state).toBe(KeyState.ACTIVE);

    const accepted = await ask("y");
    expect(accepted.code).toBe(EXIT.OK);
    expect(accepted.stdout).toMatch(/^Revoked /);
    expect((await s.connect.getKey({ organizationId: "org_cli", keyId: key!.id, actor: owner })).key?.state).toBe(KeyState.REVOKED);
  });

  it("prints help with the actor defaults and the exit codes", async () => {
    const help = await cli(["--help"]);
    expect(help.code).toBe(0);
    expect(help.stdout).toContain('defaults\nto user "cli" with role owner');
    expect(help.stdout).toContain("  5  not found\n");
  });
});
