// A real Redis Cluster for tests, from the same redis-server binary as the
// rest: three masters (optionally one replica each, for failover), each node on
// free ports with its nodes.conf in a temp dir of its own, joined with
// `redis-cli --cluster create`. It can tell which master serves a key, kill a
// master and wait for its replica to be promoted, and stops everything (bounded
// in time, temp dirs removed).
//
//   const cluster = await TestRedisCluster.start({ replicas: 1 });
//   env: { REDIS_CLUSTER_NODES: cluster.seeds }
//   const { promoted } = await cluster.failover(await cluster.masterFor("apikeys:v1:cr:{key_1}:203101"));
//   (or kill() and waitForPromotion() apart, to act while the cluster fails over)
//   await cluster.stop();
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { Redis } from "ioredis";
import { freePort } from "./redis.js";

const run = promisify(execFile);
const HOST = "127.0.0.1";
const MASTERS = 3;

export interface ClusterNode {
  port: number;
  /** The cluster bus port (gossip and failover between nodes). */
  busPort: number;
  dir: string;
  proc: ChildProcess | null;
}

export interface TestRedisClusterOptions {
  /** Replicas per master: 1 for failover tests (6 nodes), else 0 (3 nodes). */
  replicas?: 0 | 1;
  /** How long a node may be silent before it is failed over (ms): small, so a failover takes ~2 s. */
  nodeTimeoutMs?: number;
  /** Extra redis-server arguments for every node (e.g. ACL users: ["--user", "name", "on", ">password", …]). */
  args?: string[];
  /** TLS only, between clients and nodes and between nodes (the files are PEM; client certificates not required). */
  tls?: { certFile: string; keyFile: string; caFile: string };
}

async function until<T>(what: string, timeoutMs: number, probe: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const value = await probe();
      if (value !== undefined) return value;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`${what} within ${timeoutMs} ms${last ? ` (last error: ${String(last)})` : ""}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export class TestRedisCluster {
  private readonly admin = new Map<number, Redis>();

  private constructor(
    readonly nodes: ClusterNode[],
    private readonly options: Required<Omit<TestRedisClusterOptions, "tls">> & Pick<TestRedisClusterOptions, "tls">,
  ) {}

  static async start(options: TestRedisClusterOptions = {}): Promise<TestRedisCluster> {
    const opts = { replicas: options.replicas ?? 0, nodeTimeoutMs: options.nodeTimeoutMs ?? 1000, args: options.args ?? [], tls: options.tls };
    const nodes: ClusterNode[] = [];
    for (let i = 0; i < MASTERS * (1 + opts.replicas); i++) {
      nodes.push({ port: await freePort(), busPort: await freePort(), dir: mkdtempSync(join(tmpdir(), "apikeys-cluster-")), proc: null });
    }
    const cluster = new TestRedisCluster(nodes, opts);
    try {
      await Promise.all(nodes.map((n) => cluster.launch(n)));
      // With --cluster-replicas 1, redis-cli makes three of the six masters and gives each a replica.
      await run(
        "redis-cli",
        [
          ...(opts.tls ? ["--tls", "--cacert", opts.tls.caFile] : []),
          "--cluster", "create", ...nodes.map((n) => `${HOST}:${n.port}`), "--cluster-replicas", String(opts.replicas), "--cluster-yes",
        ],
        { timeout: 20_000 },
      );
      await cluster.waitUntilHealthy();
    } catch (err) {
      await cluster.stop();
      throw err;
    }
    return cluster;
  }

  /** REDIS_CLUSTER_NODES for the service: every node as a seed (with TLS, the first as a rediss:// URL). */
  get seeds(): string {
    const seeds = this.nodes.map((n) => `${HOST}:${n.port}`);
    if (this.options.tls) seeds[0] = `rediss://${seeds[0]}`;
    return seeds.join(",");
  }

  /** The running nodes' ports. */
  get livePorts(): number[] {
    return this.nodes.filter((n) => n.proc !== null).map((n) => n.port);
  }

  /** Runs a command on one node. */
  async command(port: number, ...args: (string | number)[]): Promise<unknown> {
    let conn = this.admin.get(port);
    if (conn === undefined) {
      const tls = this.options.tls ? { tls: { ca: readFileSync(this.options.tls.caFile) } } : {};
      conn = new Redis({ host: HOST, port, lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null, enableOfflineQueue: false, ...tls });
      conn.on("error", () => {}); // a killed node: the command below fails and says so
      this.admin.set(port, conn);
    }
    if (conn.status === "wait") await conn.connect();
    if (conn.status === "end") {
      this.admin.delete(port);
      return this.command(port, ...args);
    }
    return conn.call(String(args[0]), ...args.slice(1).map(String));
  }

  /** The slot of a key (its hash tag's, when it has one). */
  async slotOf(key: string): Promise<number> {
    return Number(await this.command(this.livePorts[0], "CLUSTER", "KEYSLOT", key));
  }

  /** The port of the master serving a slot, as `askPort` sees the cluster (default: any live node). */
  async masterOfSlot(slot: number, askPort = this.livePorts[0]): Promise<number> {
    const slots = (await this.command(askPort, "CLUSTER", "SLOTS")) as [number, number, [string, number, string], ...unknown[]][];
    const range = slots.find(([start, end]) => slot >= start && slot <= end);
    if (range === undefined) throw new Error(`slot ${slot} is not served`);
    return Number(range[2][1]);
  }

  /** The port of the master serving a key. */
  async masterFor(key: string): Promise<number> {
    return this.masterOfSlot(await this.slotOf(key));
  }

  /** The masters' ports, as the cluster sees them now. */
  async masters(): Promise<number[]> {
    const slots = (await this.command(this.livePorts[0], "CLUSTER", "SLOTS")) as [number, number, [string, number, string]][];
    return [...new Set(slots.map((s) => Number(s[2][1])))].sort((a, b) => a - b);
  }

  /** kill -9 one node: its connections drop without any goodbye. */
  async kill(port: number): Promise<void> {
    const node = this.node(port);
    this.admin.get(port)?.disconnect();
    this.admin.delete(port);
    const proc = node.proc;
    node.proc = null;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    await new Promise<void>((resolve) => {
      proc.once("exit", () => resolve());
      proc.kill("SIGKILL");
    });
  }

  /**
   * Kills a master and waits until its replica has been promoted and every
   * surviving node reports the cluster healthy again. Needs `replicas: 1`.
   */
  async failover(masterPort: number, timeoutMs = 15_000): Promise<{ promoted: number; tookMs: number }> {
    const started = Date.now();
    const slot = await this.firstSlotOf(masterPort);
    await this.kill(masterPort);
    const promoted = await this.waitForPromotion(slot, masterPort, timeoutMs);
    return { promoted, tookMs: Date.now() - started };
  }

  /** The lowest slot a master serves (to follow its slots through a failover). */
  async firstSlotOf(masterPort: number): Promise<number> {
    const view = await this.masterView(masterPort);
    const owned = view.find(([, , master]) => master === masterPort);
    if (owned === undefined) throw new Error(`${masterPort} is not a master`);
    return owned[0];
  }

  /**
   * After `formerMaster` was killed: waits until every surviving node agrees on
   * another master for `slot` and the cluster is healthy; returns that master's port.
   */
  async waitForPromotion(slot: number, formerMaster: number, timeoutMs = 15_000): Promise<number> {
    const promoted = await until(`a replica of ${formerMaster} promoted`, timeoutMs, async () => {
      const views = await Promise.all(this.livePorts.map((p) => this.masterOfSlot(slot, p)));
      return views.every((v) => v === views[0] && v !== formerMaster) ? views[0] : undefined;
    });
    await this.waitUntilHealthy(timeoutMs);
    return promoted;
  }

  /** Starts a killed node again on its ports; it rejoins from its nodes.conf (a former master as a replica). */
  async restart(port: number): Promise<void> {
    await this.launch(this.node(port));
    await this.waitUntilHealthy();
  }

  /** Removes every key from every master (the replicas follow): a cluster that lost its data. */
  async flushAll(): Promise<void> {
    for (const port of await this.masters()) await this.command(port, "FLUSHALL");
  }

  /**
   * Every live node reports cluster_state:ok and the same masters for all 16384 slots, and every
   * replica has synced with its master (until then it could not be promoted).
   */
  async waitUntilHealthy(timeoutMs = 15_000): Promise<void> {
    await until("the cluster healthy", timeoutMs, async () => {
      for (const port of this.livePorts) {
        const info = String(await this.command(port, "CLUSTER", "INFO"));
        if (!info.includes("cluster_state:ok") || !info.includes("cluster_slots_ok:16384")) return undefined;
        const replication = String(await this.command(port, "INFO", "replication"));
        if (replication.includes("role:slave") && !replication.includes("master_link_status:up")) return undefined;
      }
      const views = await Promise.all(this.livePorts.map(async (p) => JSON.stringify(await this.masterView(p))));
      return views.every((v) => v === views[0]) ? true : undefined;
    });
  }

  /** Kills every node (bounded: SIGKILL) and removes the temp dirs. */
  async stop(): Promise<void> {
    for (const conn of this.admin.values()) conn.disconnect();
    this.admin.clear();
    await Promise.all(this.nodes.map((n) => this.kill(n.port)));
    for (const n of this.nodes) rmSync(n.dir, { recursive: true, force: true });
  }

  private node(port: number): ClusterNode {
    const node = this.nodes.find((n) => n.port === port);
    if (node === undefined) throw new Error(`no node on port ${port}`);
    return node;
  }

  /** Slot ranges and their masters, as one node sees them. */
  private async masterView(port: number): Promise<[number, number, number][]> {
    const slots = (await this.command(port, "CLUSTER", "SLOTS")) as [number, number, [string, number, string]][];
    return slots.map(([start, end, master]): [number, number, number] => [start, end, Number(master[1])]).sort((a, b) => a[0] - b[0]);
  }

  private async launch(node: ClusterNode): Promise<void> {
    const tls = this.options.tls;
    const listen = tls
      ? [
          "--port", "0",
          "--tls-port", String(node.port),
          "--tls-cluster", "yes",
          "--tls-replication", "yes",
          "--tls-cert-file", tls.certFile,
          "--tls-key-file", tls.keyFile,
          "--tls-ca-cert-file", tls.caFile,
          "--tls-auth-clients", "no",
        ]
      : ["--port", String(node.port)];
    const proc = spawn(
      "redis-server",
      [
        ...listen,
        "--bind", HOST,
        "--cluster-enabled", "yes",
        "--cluster-port", String(node.busPort),
        "--cluster-config-file", "nodes.conf",
        "--cluster-node-timeout", String(this.options.nodeTimeoutMs),
        "--dir", node.dir,
        "--save", "",
        "--appendonly", "no",
        // A replica must have synced before it may be promoted; Redis 7 waits 5 s to batch diskless syncs.
        "--repl-diskless-sync-delay", "0",
        ...this.options.args,
      ],
      { stdio: "ignore" },
    );
    node.proc = proc;
    await until(`redis-server on ${node.port} answering`, 10_000, async () => {
      if (proc.exitCode !== null) throw new Error(`redis-server on ${node.port} exited with ${proc.exitCode}`);
      return (await this.command(node.port, "PING")) === "PONG" ? true : undefined;
    });
  }
}
