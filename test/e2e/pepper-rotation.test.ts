// Rotating KEY_PEPPER without invalidating keys: instances started with the
// new pepper and KEY_PEPPER_PREVIOUS still verify keys hashed with the old
// one, and move each such key to the new pepper the first time it is used.
import { createHmac } from "node:crypto";
import * as grpc from "@grpc/grpc-js";
import mysql from "mysql2/promise";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Role, VerifyCode } from "../../gen/apikeys/v1/apikeys_pb.js";
import { generateSecret } from "../../src/keys/key-format.js";
import { type TestDatabase, freshDatabase } from "../helpers/mysql.js";
import { type TestServer, startServer } from "../helpers/server.js";

const OLD = "the-old-pepper-0123456789";
const NEW = "the-new-pepper-9876543210";
const owner = { userId: "u_owner", role: Role.OWNER };

function hmac(pepper: string, secret: string): string {
  return createHmac("sha256", pepper).update(secret).digest("hex");
}

describe("pepper rotation (KEY_PEPPER_PREVIOUS)", () => {
  let db: TestDatabase;
  let sql: mysql.Connection;
  const running: TestServer[] = [];
  const start = async (env: Record<string, string>) => {
    const s = await startServer({ databaseUrl: db.url, env });
    running.push(s);
    return s;
  };
  const storedHashes = async () => {
    const [rows] = await sql.query("SELECT HEX(hash) AS h FROM key_secrets");
    return new Set((rows as { h: string }[]).map((r) => r.h.toLowerCase()));
  };
  const verify = (s: TestServer, key: string) => s.grpc.call("verifyKey", { key }, new grpc.Metadata());
  let used = "";
  let unused = "";

  beforeAll(async () => {
    db = await freshDatabase();
    const before = await start({ KEY_PEPPER: OLD });
    used = (await before.grpc.call("createKey", { organizationId: "org_p", actor: owner, name: "used" })).secret;
    unused = (await before.grpc.call("createKey", { organizationId: "org_p", actor: owner, name: "unused" })).secret;
    await before.stop();
    sql = await mysql.createConnection(db.url);
  });
  afterAll(async () => {
    for (const s of running) await s.stop();
    await sql?.end();
    await db?.drop();
  });

  it("verifies a key hashed with the previous pepper, and re-hashes it to the current one once", async () => {
    const during = await start({ KEY_PEPPER: NEW, KEY_PEPPER_PREVIOUS: OLD });
    expect(await storedHashes()).toEqual(new Set([hmac(OLD, used), hmac(OLD, unused)]));
    expect((await verify(during, used)).code).toBe(VerifyCode.VALID);
    expect(await storedHashes()).toEqual(new Set([hmac(NEW, used), hmac(OLD, unused)]));
    expect((await verify(during, used)).code).toBe(VerifyCode.VALID);
    expect(during.app.verifier.stats.rehashed).toBe(1);

    // New keys use the current pepper; unknown keys are still unknown.
    const fresh = (await during.grpc.call("createKey", { organizationId: "org_p", actor: owner })).secret;
    expect(await storedHashes()).toContain(hmac(NEW, fresh));
    expect((await verify(during, generateSecret("sk"))).code).toBe(VerifyCode.NOT_FOUND);
  });

  it("after the rotation, keys used during it keep working; a key never presented during it does not", async () => {
    const after = await start({ KEY_PEPPER: NEW });
    expect((await verify(after, used)).code).toBe(VerifyCode.VALID);
    expect((await verify(after, unused)).code).toBe(VerifyCode.NOT_FOUND);
    const [rows] = await sql.query("SELECT name FROM api_keys k JOIN key_secrets s ON s.key_id = k.id WHERE s.hash = UNHEX(?)", [hmac(OLD, unused)]);
    expect(rows).toEqual([{ name: "unused" }]);
  });
});
