// `npm run dev` as a newcomer uses it: start it, read the demo key and the
// curl call it prints, run that call, and stop it with Ctrl-C.
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { promisify } from "node:util";
import { afterAll, describe, expect, it } from "vitest";

const run = promisify(execFile);

describe("dev mode", () => {
  let proc: ChildProcess | null = null;
  afterAll(() => {
    proc?.kill("SIGKILL");
  });

  it("starts without MySQL or Redis, prints a demo key and a curl call that works", async () => {
    proc = spawn(process.execPath, ["--import", "tsx", "src/main.ts", "--dev"], {
      env: { ...process.env, GRPC_PORT: "0", HTTP_PORT: "0", MYSQL_URL: "mysql://nobody@127.0.0.1:1/none", REDIS_URL: "redis://127.0.0.1:1", LOG_LEVEL: "warn" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    proc.stdout!.on("data", (d) => (out += d));
    proc.stderr!.on("data", (d) => (out += d));
    const deadline = Date.now() + 20_000;
    while (!/Create another:\n.*\n/.test(out)) {
      if (Date.now() > deadline || proc.exitCode !== null) throw new Error(`dev mode did not start:\n${out}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    const secret = /^  (sk_[0-9A-Za-z]{38})$/m.exec(out)?.[1];
    expect(secret).toBeDefined();
    const curl = /^  (curl .*VerifyKey)$/m.exec(out)?.[1];
    expect(curl).toBeDefined();
    // Run the printed command exactly as a user would paste it.
    const { stdout } = await run("bash", ["-c", curl!]);
    const body = JSON.parse(stdout);
    expect(body).toMatchObject({ valid: true, code: "VERIFY_CODE_VALID", principal: { organizationId: "org_demo" } });

    const exited = new Promise<number | null>((resolve) => proc!.once("exit", (code) => resolve(code)));
    proc.kill("SIGINT");
    expect(await exited).toBe(0);
  });

  it("refuses to listen on anything but loopback: it would serve anyone a demo key and every right", async () => {
    const refused = await run(process.execPath, ["--import", "tsx", "src/main.ts", "--dev"], {
      env: { ...process.env, HOST: "0.0.0.0", GRPC_PORT: "0", HTTP_PORT: "0", LOG_LEVEL: "warn" },
      timeout: 20_000,
    }).then(
      () => ({ code: 0, stderr: "" }),
      (err: { code: number; stderr: string }) => err,
    );
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toContain('HOST must be a loopback address in dev mode (127.0.0.1, ::1 or localhost), got "0.0.0.0"');
  });
});
