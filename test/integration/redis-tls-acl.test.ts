// The service on a Redis reached over TLS only, standalone and a 3-master
// Cluster, as an ACL user configured with exactly the rule docs/redis.md gives
// (read from the page): verifications with limits and revocations work, the
// user cannot touch other keys or channels, other users cannot publish on the
// service's channels, and a wrong password or an untrusted CA stops start-up
// without the password in any message.
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Role, VerifyCode } from "../../gen/apikeys/v1/apikeys_pb.js";
import { CHANNELS } from "../../src/broadcast/redis-broadcast.js";
import { redisTarget } from "../../src/config.js";
import { COUNTER_KEYS } from "../../src/limits/redis-usage-limiter.js";
import { type RedisClient, redisClient } from "../../src/redis/connections.js";
import { type TestDatabase, freshDatabase } from "../helpers/mysql.js";
import { freePort } from "../helpers/redis.js";
import { TestRedisCluster } from "../helpers/redis-cluster.js";
import { type TestServer, startServer } from "../helpers/server.js";

const PASSWORD = "redis-acl-pass/w0rd@9"; // "/" and "@" need percent-encoding in the URL
const owner = { userId: "u_owner", role: Role.OWNER };
const silent = pino({ level: "silent" });

/** The ```acl block of docs/redis.md, with the test's password: its lines. */
function documentedAcl(): string[] {
  const page = readFileSync(new URL("../../docs/redis.md", import.meta.url), "utf8");
  const block = /```acl\n([\s\S]*?)```/.exec(page);
  if (block === null) throw new Error("docs/redis.md has no ```acl block");
  return block[1].replace(">CHANGE-ME", `>${PASSWORD}`).trim().split("\n");
}

/** Another application's user on the same Redis: every key and command, no channels. */
const OTHER_USER = "user other on >other-password-1 resetchannels ~* +@all";

const dir = mkdtempSync(join(tmpdir(), "apikeys-redis-tls-"));
const path = (name: string) => join(dir, name);

beforeAll(() => {
  // A CA and a certificate for 127.0.0.1 signed by it (and a second CA nobody trusts).
  for (const ca of ["ca", "rogue-ca"]) {
    openssl(
      "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", path(`${ca}.key`),
      "-out", path(`${ca}.pem`), "-days", "1", "-subj", `/CN=${ca}`, "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign",
    );
  }
  openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", path("redis.key"), "-out", path("redis.csr"), "-subj", "/CN=redis");
  writeFileSync(path("redis.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n");
  openssl("x509", "-req", "-in", path("redis.csr"), "-CA", path("ca.pem"), "-CAkey", path("ca.key"), "-CAcreateserial", "-out", path("redis.pem"), "-days", "1", "-extfile", path("redis.ext"));
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

/** A TLS-only Redis with the documented users: the service's environment for a user, and how to stop it. */
interface Deployment {
  env(user: string, password: string): Record<string, string>;
  stop(): Promise<void>;
}

async function standalone(): Promise<Deployment> {
  const port = await freePort();
  writeFileSync(
    path("redis.conf"),
    [
      "port 0", // TLS only
      `tls-port ${port}`,
      "bind 127.0.0.1",
      `tls-cert-file ${path("redis.pem")}`,
      `tls-key-file ${path("redis.key")}`,
      `tls-ca-cert-file ${path("ca.pem")}`,
      "tls-auth-clients no",
      'save ""',
      "appendonly no",
      `dir ${dir}`,
      ...documentedAcl(),
      OTHER_USER,
      "",
    ].join("\n"),
  );
  const redis: ChildProcess = spawn("redis-server", [path("redis.conf")], { stdio: "ignore" });
  return {
    env: (user, password) => ({ REDIS_URL: `rediss://${user}:${encodeURIComponent(password)}@127.0.0.1:${port}` }),
    stop: async () => {
      redis.kill("SIGKILL");
    },
  };
}

async function cluster(): Promise<Deployment> {
  // The default user stays on here: the helper's own tooling (redis-cli --cluster create, probes) uses it.
  const users = [...documentedAcl().filter((line) => !line.startsWith("user default ")), OTHER_USER];
  const c = await TestRedisCluster.start({
    args: users.flatMap((line) => ["--user", ...line.split(" ").slice(1)]),
    tls: { certFile: path("redis.pem"), keyFile: path("redis.key"), caFile: path("ca.pem") },
  });
  return {
    env: (user, password) => ({ REDIS_CLUSTER_NODES: c.seeds.replace("rediss://", `rediss://${user}:${encodeURIComponent(password)}@`) }),
    stop: () => c.stop(),
  };
}

function openssl(...args: string[]): void {
  execFileSync("openssl", args, { stdio: "pipe" });
}

describe.each([
  ["standalone", standalone],
  ["a 3-master cluster", cluster],
])("Redis over TLS (%s), as the documented ACL user", (_name, deploy) => {
  let redis: Deployment;
  let db: TestDatabase;
  let s: TestServer;
  const clients: RedisClient[] = [];

  const env = (over: Record<string, string> = {}) => ({ ...redis.env("apikeys", PASSWORD), REDIS_TLS_CA_FILE: path("ca.pem"), ...over });

  async function connect(user: string, password: string): Promise<RedisClient> {
    const client = redisClient(redisTarget(env(redis.env(user, password))), "publisher", { logger: silent });
    clients.push(client);
    await client.connect();
    return client;
  }

  beforeAll(async () => {
    redis = await deploy();
    const deadline = Date.now() + 10_000;
    for (;;) {
      try {
        await (await connect("apikeys", PASSWORD)).ping();
        break;
      } catch (err) {
        if (Date.now() > deadline) throw err;
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    db = await freshDatabase();
    s = await startServer({ databaseUrl: db.url, env: env() });
  });

  afterAll(async () => {
    await s?.stop();
    for (const c of clients) c.disconnect();
    await redis?.stop();
    await db?.drop();
  });

  it("verifies with limits and revokes, over TLS as the ACL user", async () => {
    const created = await s.connect.createKey({ organizationId: "org_acl", actor: owner, name: "k", limits: { requestsPerMinute: 2, monthlyCredits: 10n } });
    const first = await s.grpc.call("verifyKey", { key: created.secret, cost: 3 });
    expect(first).toMatchObject({ code: VerifyCode.VALID, remainingCredits: 7n });
    expect((await s.grpc.call("verifyKey", { key: created.secret, cost: 3 })).remainingCredits).toBe(4n);
    expect((await s.grpc.call("verifyKey", { key: created.secret })).code).toBe(VerifyCode.RATE_LIMITED);
    await s.app.limiter.flush();
    // The broadcast published and received its own invalidation: RevokeKey returned, and the key is refused.
    await s.connect.revokeKey({ organizationId: "org_acl", keyId: created.key!.id, actor: owner });
    expect((await s.grpc.call("verifyKey", { key: created.secret })).code).toBe(VerifyCode.REVOKED);
    const apikeys = await connect("apikeys", PASSWORD);
    expect(await apikeys.get(COUNTER_KEYS.credits(created.key!.id, new Date().toISOString().slice(0, 7).replace("-", "")))).toBe("6");
  });

  it("refuses the service's user every other key and channel", async () => {
    const apikeys = await connect("apikeys", PASSWORD);
    await expect(apikeys.set("sessions:42", "x")).rejects.toThrow(/NOPERM/);
    await expect(apikeys.get("other:key")).rejects.toThrow(/NOPERM/);
    await expect(apikeys.publish("news", "x")).rejects.toThrow(/NOPERM/);
    await expect(apikeys.subscribe("news")).rejects.toThrow(/NOPERM/);
    await expect(apikeys.call("FLUSHALL")).rejects.toThrow(/NOPERM/);
    await expect(apikeys.call("KEYS", "*")).rejects.toThrow(/NOPERM/);
  });

  it("refuses other users the service's channels: they cannot publish invalidations", async () => {
    const other = await connect("other", "other-password-1");
    await expect(other.publish(CHANNELS.bus, "{}")).rejects.toThrow(/NOPERM/);
    await expect(other.publish(CHANNELS.ack("i_anyone"), "0")).rejects.toThrow(/NOPERM/);
    await expect(other.call("SPUBLISH", CHANNELS.bus, "{}")).rejects.toThrow(/NOPERM/);
    const sub = await connect("other", "other-password-1");
    await expect(sub.subscribe(CHANNELS.bus)).rejects.toThrow(/NOPERM/);
    expect(await other.set("sessions:42", "x")).toBe("OK"); // the user is real: its own keys work
  });

  it("does not start with a wrong password or an untrusted CA, and never shows the password", async () => {
    for (const [over, expected] of [
      [redis.env("apikeys", "wrong-password-123"), /WRONGPASS/],
      [{ REDIS_TLS_CA_FILE: path("rogue-ca.pem") }, /certificate|self.signed|unable to verify/i],
      [{ REDIS_TLS_CA_FILE: path("redis.ext") }, /^REDIS_TLS_CA_FILE: ".*redis\.ext" is not a PEM certificate$/],
    ] as const) {
      const err = await startServer({ databaseUrl: db.url, env: env(over) }).then(
        async (started) => {
          await started.stop();
          return new Error("started");
        },
        (e: unknown) => e as Error,
      );
      expect(String(err.message)).toMatch(expected);
      expect(`${err.message}${err.stack}`).not.toContain(PASSWORD);
      expect(`${err.message}${err.stack}`).not.toContain(encodeURIComponent(PASSWORD));
    }
  });
});
