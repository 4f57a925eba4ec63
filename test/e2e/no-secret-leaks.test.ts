// No secret at rest, in logs, in errors or in metrics. A full key lifecycle on
// both ports with debug logging, plus the mistakes callers make (a wrong token,
// a secret pasted into the wrong field); then every table of the database,
// every log line, every error the callers got back, /metrics and Redis are
// searched for every secret, the peppers and the caller tokens.
import { Code, ConnectError } from "@connectrpc/connect";
import * as grpc from "@grpc/grpc-js";
import { Redis } from "ioredis";
import mysql from "mysql2/promise";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Role, VerifyCode } from "../../gen/apikeys/v1/apikeys_pb.js";
import { generateSecret } from "../../src/keys/key-format.js";
import { createLogger } from "../../src/logger.js";
import { type TestServer, startServer } from "../helpers/server.js";

const PEPPER = "leak-test-pepper-7f3a9c1e5b";
const PREVIOUS_PEPPER = "leak-test-old-pepper-2d8e6a";
const WEB_TOKEN = "leak-test-web-token-4c1f9a-7Hq2Lm9Zx";
const GATEWAY_TOKEN = "leak-test-gateway-token-8b2e7d-7Hq2Lm9Zx";
const WRONG_TOKEN = "leak-test-wrong-token-0a0a0a-7Hq2Lm9Zx";
const owner = { userId: "u_owner", role: Role.OWNER };
/** A name that only an internal error's log line could leak. */
const INTERNAL_NAME = "name-only-in-err-sql-5d1f";
const member = { userId: "u_member", role: Role.MEMBER };

describe("no secret in the database, logs, errors or metrics", () => {
  let s: TestServer;
  const logLines: string[] = [];
  /** Everything callers got back from failed calls. */
  const errorTexts: string[] = [];
  /** Every secret the service minted in this test. */
  const secrets: string[] = [];

  const web = () => {
    const md = new grpc.Metadata();
    md.set("authorization", `Bearer ${WEB_TOKEN}`);
    return md;
  };
  const webHeaders = { headers: { authorization: `Bearer ${WEB_TOKEN}` } };

  /** Runs a call that must fail; keeps what the caller saw of the failure. */
  async function refused(p: Promise<unknown>): Promise<number> {
    try {
      await p;
    } catch (err) {
      if (err instanceof ConnectError) {
        errorTexts.push(`${err.code} ${err.rawMessage} ${JSON.stringify(err.details)} ${JSON.stringify([...err.metadata])}`);
        return err.code;
      }
      const e = err as grpc.ServiceError;
      const meta = e.metadata.getMap();
      errorTexts.push(`${e.code} ${e.details} ${JSON.stringify(meta)} ${Buffer.from((meta["grpc-status-details-bin"] as Buffer) ?? []).toString("latin1")}`);
      return e.code;
    }
    throw new Error("expected the call to fail");
  }

  beforeAll(async () => {
    s = await startServer({
      env: {
        KEY_PEPPER: PEPPER,
        KEY_PEPPER_PREVIOUS: PREVIOUS_PEPPER,
        ALLOW_UNAUTHENTICATED_CALLERS: "false",
        CALLERS: JSON.stringify([
          { name: "web", token: WEB_TOKEN, allow: ["manage", "verify", "admin"] },
          { name: "gateway", token: GATEWAY_TOKEN, allow: ["verify"] },
        ]),
        LOG_LEVEL: "debug",
        // Flush last-used times and credits soon, so those writes are in the dump too.
        LAST_USED_FLUSH_SECONDS: "1",
        CREDIT_FLUSH_SECONDS: "1",
      },
      logger: createLogger("debug", { write: (line: string) => void logLines.push(line) }),
    });
  });
  afterAll(async () => {
    await s?.stop();
  });

  it("runs the lifecycle and the mistakes", async () => {
    // Create over both ports, with scopes, metadata, limits and an idempotency key.
    const a = await s.grpc.call(
      "createKey",
      { organizationId: "org_leak", actor: owner, name: "a", scopes: ["docs:read"], metadata: { tier: "pro" }, limits: { requestsPerMinute: 100, monthlyCredits: 1000n }, requestId: "req-1" },
      web(),
    );
    const b = await s.connect.createKey({ organizationId: "org_leak", actor: member, name: "b", prefix: "trv_ak" }, webHeaders);
    const retried = await s.grpc.call("createKey", { organizationId: "org_leak", actor: owner, name: "a", requestId: "req-1" }, web());
    expect(retried.secret).toBe("");
    secrets.push(a.secret, b.secret);

    // Verify: valid, insufficient scope, with cost, by the verify-only caller, over both ports.
    const gateway = new grpc.Metadata();
    gateway.set("authorization", `Bearer ${GATEWAY_TOKEN}`);
    expect((await s.grpc.call("verifyKey", { key: a.secret, requiredScopes: ["docs:read"], cost: 5 }, gateway)).code).toBe(VerifyCode.VALID);
    expect((await s.grpc.call("verifyKey", { key: a.secret, requiredScopes: ["docs:write"] }, gateway)).code).toBe(VerifyCode.INSUFFICIENT_SCOPE);
    expect((await s.connect.verifyKey({ key: b.secret }, webHeaders)).code).toBe(VerifyCode.VALID);

    // Update, rotate with a grace period (both secrets verify), revoke, bulk revoke, member changes.
    await s.grpc.call("updateKey", { organizationId: "org_leak", keyId: a.key!.id, actor: owner, updateMask: { paths: ["name"] }, name: "a2" }, web());
    const rotated = await s.grpc.call("rotateKey", { organizationId: "org_leak", keyId: a.key!.id, actor: owner, gracePeriod: { seconds: 3600n } }, web());
    secrets.push(rotated.secret);
    expect((await s.grpc.call("verifyKey", { key: a.secret }, web())).code).toBe(VerifyCode.VALID);
    expect((await s.grpc.call("verifyKey", { key: rotated.secret }, web())).code).toBe(VerifyCode.VALID);
    await s.connect.revokeKey({ organizationId: "org_leak", keyId: a.key!.id, actor: owner, reason: "rotated out" }, webHeaders);
    expect((await s.grpc.call("verifyKey", { key: rotated.secret }, web())).code).toBe(VerifyCode.REVOKED);
    const c = await s.grpc.call("createKey", { organizationId: "org_leak", actor: member, name: "c" }, web());
    secrets.push(c.secret);
    await s.grpc.call("revokeKeys", { organizationId: "org_leak", actor: owner, createdBy: "u_member", reason: "left" }, web());
    await s.orgs.setMemberRole({ organizationId: "org_leak", userId: "u_owner", role: Role.ADMIN, actor: owner }, webHeaders);
    await s.orgs.setApiAccess({ organizationId: "org_leak", enabled: false, actor: owner }, webHeaders);
    await s.orgs.listAuditEvents({ organizationId: "org_leak", actor: owner }, webHeaders);
    const live = await s.grpc.call("createKey", { organizationId: "org_live", actor: owner, name: "live" }, web());
    secrets.push(live.secret);

    // A never-issued but well-formed key, and a malformed one.
    const neverIssued = generateSecret("sk");
    secrets.push(neverIssued);
    expect((await s.grpc.call("verifyKey", { key: neverIssued }, web())).code).toBe(VerifyCode.NOT_FOUND);
    expect((await s.grpc.call("verifyKey", { key: `${live.secret}x` }, web())).code).toBe(VerifyCode.NOT_FOUND);

    // Wrong or missing caller credentials, with a secret in the request.
    const wrong = new grpc.Metadata();
    wrong.set("authorization", `Bearer ${WRONG_TOKEN}`);
    expect(await refused(s.grpc.call("verifyKey", { key: live.secret }, wrong))).toBe(grpc.status.UNAUTHENTICATED);
    expect(await refused(s.connect.verifyKey({ key: live.secret }, { headers: { authorization: `Bearer ${WRONG_TOKEN}` } }))).toBe(Code.Unauthenticated);
    expect(await refused(s.grpc.call("createKey", { organizationId: "org_live", actor: owner, name: live.secret }, gateway))).toBe(grpc.status.PERMISSION_DENIED);

    // A secret pasted into the wrong field: refused, not stored, not echoed.
    const misplaced: [string, Record<string, unknown>][] = [
      ["getKey", { organizationId: "org_live", keyId: live.secret, actor: owner }],
      ["revokeKey", { organizationId: "org_live", keyId: live.secret, actor: owner }],
      ["revokeKey", { organizationId: "org_live", keyId: live.key!.id, actor: owner, reason: `leaked: ${live.secret}` }],
      ["createKey", { organizationId: "org_live", actor: owner, name: `my key ${live.secret}` }],
      ["createKey", { organizationId: "org_live", actor: owner, metadata: { backup: live.secret } }],
      ["createKey", { organizationId: "org_live", actor: owner, scopes: [live.secret] }],
      ["createKey", { organizationId: "org_live", actor: owner, requestId: live.secret }],
      ["createKey", { organizationId: live.secret, actor: owner }],
      ["createKey", { organizationId: "org_live", actor: { userId: live.secret, role: Role.OWNER } }],
      ["updateKey", { organizationId: "org_live", keyId: live.key!.id, actor: owner, updateMask: { paths: ["name"] }, name: live.secret }],
      ["revokeKeys", { organizationId: "org_live", actor: owner, createdBy: live.secret }],
      // A key followed directly by a letter or digit, or inside a longer word, is still a key.
      ["createKey", { organizationId: "org_live", actor: owner, name: `${live.secret}X` }],
      ["createKey", { organizationId: "org_live", actor: owner, name: `x${live.secret}0` }],
      ["createKey", { organizationId: "org_live", actor: owner, metadata: { note: `${live.secret}abc_def` } }],
      ["revokeKey", { organizationId: "org_live", keyId: live.key!.id, actor: owner, reason: `key=${live.secret}9` }],
      // An unknown field mask path is not echoed in the error.
      ["updateKey", { organizationId: "org_live", keyId: live.key!.id, actor: owner, updateMask: { paths: [live.secret] } }],
      ["updateKey", { organizationId: "org_live", keyId: live.key!.id, actor: owner, updateMask: { paths: ["name", `x${live.secret}`] }, name: "n" }],
    ];
    for (const [method, req] of misplaced) {
      expect(await refused(s.grpc.call(method as "getKey", req as never, web())), method).toBe(grpc.status.INVALID_ARGUMENT);
    }
    expect(await refused(s.orgs.setMemberRole({ organizationId: "org_live", userId: live.secret, role: Role.MEMBER }, webHeaders))).toBe(Code.InvalidArgument);
    expect(await refused(s.connect.getKey({ organizationId: "org_live", keyId: live.secret, actor: owner }, webHeaders))).toBe(Code.InvalidArgument);

    // The live key still works: nothing above touched it.
    expect((await s.grpc.call("verifyKey", { key: live.secret }, web())).code).toBe(VerifyCode.VALID);

    // An internal error from MySQL: mysql2's error carries the statement with its values (err.sql) and a message
    // that may quote them. A column too narrow makes the name fail to fit; the log says what failed, not with what.
    const sql = await mysql.createConnection(s.db!.url);
    try {
      await sql.query("ALTER TABLE api_keys MODIFY name VARCHAR(4) NOT NULL");
      expect(await refused(s.grpc.call("updateKey", { organizationId: "org_live", keyId: live.key!.id, actor: owner, updateMask: { paths: ["name", "metadata"] }, name: INTERNAL_NAME, metadata: { note: INTERNAL_NAME } }, web()))).toBe(grpc.status.INTERNAL);
    } finally {
      await sql.end();
    }
    expect(logLines.join("")).toContain('"msg":"internal error"');
    // Let the batched last-used times and credits reach the database.
    await new Promise((r) => setTimeout(r, 1500));
  });

  it("finds none of them anywhere", async () => {
    const needles = new Map<string, string>([
      ["pepper", PEPPER],
      ["previous pepper", PREVIOUS_PEPPER],
      ["web token", WEB_TOKEN],
      ["gateway token", GATEWAY_TOKEN],
      ["wrong token", WRONG_TOKEN],
      ["a request's values (err.sql)", INTERNAL_NAME],
    ]);
    for (const [i, secret] of secrets.entries()) {
      needles.set(`secret ${i}`, secret);
      // The part no preview shows: finding it means (part of) a secret was kept.
      needles.set(`secret ${i} (hidden part)`, secret.slice(secret.lastIndexOf("_") + 5, -4));
    }

    const sql = await mysql.createConnection(s.db!.url);
    let dump = "";
    try {
      const [tables] = await sql.query("SHOW TABLES");
      const names = (tables as Record<string, string>[]).map((row) => Object.values(row)[0]);
      expect(names).toEqual(expect.arrayContaining(["api_keys", "key_secrets", "audit_events", "members", "organizations"]));
      for (const table of names) {
        const [rows] = await sql.query(`SELECT * FROM \`${table}\``);
        // Binary columns in every form a secret could hide in.
        dump += `${table}\n${JSON.stringify(rows, (_, v) => (v?.type === "Buffer" ? Buffer.from(v.data).toString("latin1") + Buffer.from(v.data).toString("hex") : v))}\n`;
      }
    } finally {
      await sql.end();
    }
    expect(dump).toContain("org_leak"); // the dump is real

    const log = logLines.join("");
    expect(log).toContain('"caller":"web"'); // the log is real: it recorded the calls

    const metrics = await (await fetch(`http://127.0.0.1:${s.httpPort}/metrics`)).text();
    // Failed verifications are counted (malformed without a lookup, unknown after one).
    expect(metrics).toMatch(/apikeys_verify_malformed_keys_total [1-9]/);
    expect(metrics).toMatch(/apikeys_verify_outcomes_total\{code="NOT_FOUND"\} [2-9]/);

    const redis = new Redis(s.app.config.redis.nodes[0]);
    let redisDump = "";
    try {
      for (const key of await redis.keys("apikeys:*")) {
        const type = await redis.type(key);
        const value = type === "string" ? await redis.get(key) : type === "hash" ? JSON.stringify(await redis.hgetall(key)) : "";
        redisDump += `${key}=${value}\n`;
      }
    } finally {
      redis.disconnect();
    }

    expect(errorTexts.length).toBeGreaterThan(10);
    const places = { database: dump, logs: log, errors: errorTexts.join("\n"), metrics, redis: redisDump };
    const found: string[] = [];
    for (const [where, text] of Object.entries(places)) {
      for (const [what, needle] of needles) if (text.includes(needle)) found.push(`${what} in ${where}`);
    }
    expect(found).toEqual([]);
  });
});
