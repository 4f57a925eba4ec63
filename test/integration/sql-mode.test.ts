// A MySQL server whose default sql_mode has NO_BACKSLASH_ESCAPES (set
// server-wide, on a private MariaDB: never on the shared one). Values reach SQL
// escaped on the client, with a backslash before a quote; on such a server that
// backslash is a plain character, the quote ends the string, and a key's name
// becomes SQL. The review's attack: rename a key to
//   x', revoke_time = NULL #
// and every revoked key of every organization is active again. The service sets
// its sessions' sql_mode itself (src/store/mysql-pool.ts), so the name is a name.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { KeyState, Role, VerifyCode } from "../../gen/apikeys/v1/apikeys_pb.js";
import { PrivateMariaDb } from "../helpers/private-mariadb.js";
import { type TestServer, startServer } from "../helpers/server.js";

const owner = { userId: "u_owner", role: Role.OWNER };

describe("a server whose default sql_mode has NO_BACKSLASH_ESCAPES", () => {
  let mariadb: PrivateMariaDb;
  let s: TestServer;

  beforeAll(async () => {
    mariadb = await PrivateMariaDb.start(["--sql-mode=NO_BACKSLASH_ESCAPES"]);
    s = await startServer({ databaseUrl: await mariadb.freshDatabase("apikeys_sql_mode") });
  }, 120_000);
  afterAll(async () => {
    await s?.stop();
    await mariadb?.stop();
  });

  it("stores a name with quotes, backslashes and comment marks as it is, and it revives no revoked key", async () => {
    const revoked = await s.connect.createKey({ organizationId: "org_victim", actor: owner, name: "revoked" });
    await s.connect.revokeKey({ organizationId: "org_victim", keyId: revoked.key!.id, actor: owner });
    const mine = await s.connect.createKey({ organizationId: "org_attacker", actor: owner, name: "mine" });

    const payload = "x', revoke_time = NULL #";
    const updated = await s.connect.updateKey({ organizationId: "org_attacker", keyId: mine.key!.id, actor: owner, name: payload, updateMask: { paths: ["name"] } });
    expect(updated.key?.name).toBe(payload);
    for (const name of ["back\\slash", "it's \\' -- ", 'quote" `tick`']) {
      const created = await s.connect.createKey({ organizationId: "org_attacker", actor: owner, name, metadata: { note: name } });
      expect((await s.connect.getKey({ organizationId: "org_attacker", keyId: created.key!.id, actor: owner })).key).toMatchObject({ name, metadata: { note: name } });
    }

    const victim = await s.connect.getKey({ organizationId: "org_victim", keyId: revoked.key!.id, actor: owner });
    expect([victim.key?.state, victim.key?.name]).toEqual([KeyState.REVOKED, "revoked"]);
    expect((await s.connect.verifyKey({ key: revoked.secret })).code).toBe(VerifyCode.REVOKED);
  });
});
