// A private MariaDB primary and a replica of it (GTID replication), each a
// mariadbd of its own with its own data directory on a free port: for the
// replica bench row, and for tests that need replication lag on demand (STOP
// SLAVE SQL_THREAD; test/integration/replica.test.ts). Never the shared server. The data directory is initialised once (mariadb-install-db)
// and copied for the replica.
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { cp, mkdtemp, rm } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import mysql from "mysql2/promise";
import type { RowDataPacket } from "mysql2/promise";

const run = promisify(execFile);

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

export class Mariadbd {
  private constructor(
    readonly port: number,
    private readonly child: ChildProcess,
  ) {}

  static async start(dir: string, name: string, serverId: number, extra: string[]): Promise<Mariadbd> {
    const port = await freePort();
    const child = spawn(
      "mariadbd",
      [
        "--no-defaults",
        ...(process.getuid?.() === 0 ? ["--user=root"] : []),
        `--datadir=${join(dir, name)}`,
        `--port=${port}`,
        "--bind-address=127.0.0.1",
        `--socket=${join(dir, `${name}.sock`)}`,
        `--pid-file=${join(dir, `${name}.pid`)}`,
        `--server-id=${serverId}`,
        // Root without a password from 127.0.0.1, for the tests and the replica's connection.
        "--skip-grant-tables",
        "--innodb-buffer-pool-size=32M",
        "--innodb-log-file-size=8M",
        "--skip-name-resolve",
        ...extra,
      ],
      { stdio: "ignore" },
    );
    const server = new Mariadbd(port, child);
    const deadline = Date.now() + 30_000;
    for (;;) {
      if (child.exitCode !== null) throw new Error(`mariadbd ${name} exited with ${child.exitCode}`);
      try {
        const conn = await mysql.createConnection({ host: "127.0.0.1", port, user: "root" });
        await conn.end();
        return server;
      } catch (err) {
        if (Date.now() > deadline) {
          child.kill("SIGKILL");
          throw err;
        }
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  }

  url(database = ""): string {
    return `mysql://root@127.0.0.1:${this.port}/${database}`;
  }

  async query<T extends RowDataPacket[]>(sql: string, values: unknown[] = []): Promise<T> {
    const conn = await mysql.createConnection({ host: "127.0.0.1", port: this.port, user: "root" });
    try {
      const [rows] = await conn.query<T>(sql, values);
      return rows;
    } finally {
      await conn.end();
    }
  }

  async stop(): Promise<void> {
    if (this.child.exitCode !== null) return;
    const exited = new Promise((r) => this.child.once("exit", r));
    this.child.kill("SIGTERM");
    const timer = setTimeout(() => this.child.kill("SIGKILL"), 10_000);
    await exited;
    clearTimeout(timer);
  }
}

export class ReplicatedMariadb {
  private constructor(
    private readonly dir: string,
    readonly primary: Mariadbd,
    readonly replica: Mariadbd,
  ) {}

  /** Starts both servers and replication (the replica follows the primary from its first transaction). */
  static async start(): Promise<ReplicatedMariadb> {
    const dir = await mkdtemp(join(tmpdir(), "apikeys-replica-"));
    try {
      await run("mariadb-install-db", ["--no-defaults", `--datadir=${join(dir, "primary")}`, "--auth-root-authentication-method=normal", "--skip-test-db"], {
        timeout: 120_000,
      });
      await cp(join(dir, "primary"), join(dir, "replica"), { recursive: true });
      const [primary, replica] = await Promise.all([
        Mariadbd.start(dir, "primary", 1, [`--log-bin=${join(dir, "primary", "bin")}`, "--binlog-format=ROW"]),
        Mariadbd.start(dir, "replica", 2, ["--read-only"]),
      ]);
      await replica.query(
        `CHANGE MASTER TO MASTER_HOST = '127.0.0.1', MASTER_PORT = ${primary.port}, MASTER_USER = 'root', MASTER_USE_GTID = slave_pos`,
      );
      await replica.query("START SLAVE");
      return new ReplicatedMariadb(dir, primary, replica);
    } catch (err) {
      await rm(dir, { recursive: true, force: true });
      throw err;
    }
  }

  /** Waits until the replica has applied everything the primary has committed. */
  async caughtUp(timeoutS = 10): Promise<void> {
    const [{ position }] = await this.primary.query<RowDataPacket[]>("SELECT @@gtid_binlog_pos AS position");
    const [{ waited }] = await this.replica.query<RowDataPacket[]>("SELECT MASTER_GTID_WAIT(?, ?) AS waited", [position, timeoutS]);
    if (Number(waited) !== 0) throw new Error(`the replica did not reach ${position} in ${timeoutS}s`);
  }

  /** Lag on demand: the replica keeps receiving the primary's changes but stops applying them. */
  pause(): Promise<unknown> {
    return this.replica.query("STOP SLAVE SQL_THREAD");
  }

  resume(): Promise<unknown> {
    return this.replica.query("START SLAVE SQL_THREAD");
  }

  async stop(): Promise<void> {
    await Promise.all([this.replica.stop(), this.primary.stop()]);
    await rm(this.dir, { recursive: true, force: true });
  }
}
