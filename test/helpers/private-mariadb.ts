// A MariaDB server of a test's own (mariadbd on a free port, a data directory
// in /tmp), for what must not be done to the shared one: a server-wide setting
// such as a global sql_mode. Takes a few seconds to install and start.
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir, userInfo } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import mysql from "mysql2/promise";

const run = promisify(execFile);

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as { port: number }).port;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

export class PrivateMariaDb {
  private constructor(
    private readonly process: ChildProcess,
    private readonly dir: string,
    readonly port: number,
  ) {}

  /** `args`: extra server options, e.g. `--sql-mode=NO_BACKSLASH_ESCAPES`. */
  static async start(args: string[] = []): Promise<PrivateMariaDb> {
    const dir = mkdtempSync(path.join(tmpdir(), "apikeys-mariadb-"));
    const user = userInfo().username;
    await run("mariadb-install-db", ["--no-defaults", `--datadir=${dir}/data`, "--skip-test-db", `--user=${user}`], { timeout: 60_000 });
    const port = await freePort();
    const child = spawn(
      "mariadbd",
      [
        "--no-defaults",
        `--user=${user}`,
        `--datadir=${dir}/data`,
        `--socket=${dir}/mysqld.sock`,
        `--port=${port}`,
        "--bind-address=127.0.0.1",
        "--skip-grant-tables",
        "--skip-log-bin",
        "--innodb-buffer-pool-size=16M",
        ...args,
      ],
      { stdio: "ignore" },
    );
    const db = new PrivateMariaDb(child, dir, port);
    for (const deadline = Date.now() + 30_000; ; ) {
      try {
        const conn = await mysql.createConnection({ host: "127.0.0.1", port, user: "root" });
        await conn.end();
        return db;
      } catch (err) {
        if (Date.now() > deadline || child.exitCode !== null) {
          await db.stop();
          throw err;
        }
        await new Promise((r) => setTimeout(r, 200));
      }
    }
  }

  /** A URL of a new, empty database on this server. */
  async freshDatabase(name: string): Promise<string> {
    const conn = await mysql.createConnection({ host: "127.0.0.1", port: this.port, user: "root" });
    await conn.query(`CREATE DATABASE \`${name}\``);
    await conn.end();
    return `mysql://root@127.0.0.1:${this.port}/${name}`;
  }

  async stop(): Promise<void> {
    if (this.process.exitCode === null) {
      const exited = new Promise((resolve) => this.process.once("exit", resolve));
      this.process.kill("SIGTERM");
      await Promise.race([exited, new Promise((r) => setTimeout(r, 10_000))]);
      if (this.process.exitCode === null) this.process.kill("SIGKILL");
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}
