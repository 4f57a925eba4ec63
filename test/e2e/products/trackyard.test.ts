// Trackyard's key management: a key carries a tier (metadata), a name that
// doubles as a note, and an expiry; the key list shows when each key was last
// used; a user deletes (revokes) a key; "who am I" is one VerifyKey with cost 0.
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { KeyState, Role, VerifyCode } from "../../../gen/apikeys/v1/apikeys_pb.js";
import { type TestServer, startServer } from "../../helpers/server.js";
import { concurrentRetriesCreateOne, createShownOnce } from "./product-checks.js";

const ORG = "tyd_account_42";
const user = { userId: "tyd_user", role: Role.MEMBER };
const DAY_S = 24 * 3600;

describe("Trackyard key management (tier, notes, expiry, last used)", () => {
  let s: TestServer;

  beforeAll(async () => {
    s = await startServer({ env: { DEFAULT_KEY_PREFIX: "tyd" } });
  });
  afterAll(async () => {
    await s?.stop();
  });

  const create = (name: string, tier: string) =>
    s.connect
      .createKey({ organizationId: ORG, actor: user, name, metadata: { tier }, expiration: { case: "ttl", value: { seconds: BigInt(30 * DAY_S) } } })
      .then((r) => ({ key: r.key!, secret: r.secret }));

  it("creates a key with a tier, a note and an expiry: the secret is shown once", async () => {
    const before = Date.now();
    const { key } = await createShownOnce(s, {
      organizationId: ORG,
      actor: user,
      name: "Grafana dashboard — read only, rotate in March",
      metadata: { tier: "pro" },
      expiration: { case: "ttl", value: { seconds: BigInt(90 * DAY_S) } },
      requestId: "tyd-create-1",
    });
    expect(key).toMatchObject({ name: "Grafana dashboard — read only, rotate in March", metadata: { tier: "pro" }, state: KeyState.ACTIVE });
    const expires = timestampMs(key.expireTime!);
    expect(expires).toBeGreaterThanOrEqual(before + 90 * DAY_S * 1000);
    expect(expires).toBeLessThanOrEqual(Date.now() + 90 * DAY_S * 1000);
    expect(key.lastUsedTime).toBeUndefined();

    await concurrentRetriesCreateOne(s, {
      organizationId: ORG,
      actor: user,
      name: "webhook relay",
      metadata: { tier: "free" },
      requestId: "tyd-create-2",
    });
  });

  it("shows when a key was last used, once it has been used", async () => {
    const used = await create("used", "pro");
    const idle = await create("idle", "free");
    const refused = await s.connect.createKey({ organizationId: ORG, actor: user, name: "refused", scopes: ["events:read"] });
    const before = Date.now();
    expect((await s.grpc.call("verifyKey", { key: used.secret })).valid).toBe(true);
    // A refused verification is not a use.
    expect((await s.grpc.call("verifyKey", { key: refused.secret, requiredScopes: ["events:write"] })).code).toBe(
      VerifyCode.INSUFFICIENT_SCOPE,
    );
    // Last-used times are written in batches; flush the batch instead of waiting for the interval.
    await s.app.lastUsed.flush();

    const list = await s.connect.listKeys({ organizationId: ORG, actor: user, pageSize: 1000 });
    const row = (id: string) => list.keys.find((k) => k.id === id)!;
    expect(row(used.key.id)).toMatchObject({ name: "used", metadata: { tier: "pro" }, state: KeyState.ACTIVE });
    expect(row(used.key.id).expireTime).toBeDefined();
    expect(timestampMs(row(used.key.id).lastUsedTime!)).toBeGreaterThanOrEqual(before);
    expect(row(idle.key.id).lastUsedTime).toBeUndefined();
    expect(row(refused.key!.id).lastUsedTime).toBeUndefined();
    const got = await s.connect.getKey({ organizationId: ORG, actor: user, keyId: used.key.id });
    expect(got.key?.lastUsedTime).toEqual(row(used.key.id).lastUsedTime);
  });

  it("answers 'who am I' in one VerifyKey call with cost 0", async () => {
    const { key, secret } = await create("me endpoint", "enterprise");
    const me = await s.grpc.call("verifyKey", { key: secret, cost: 0 });
    expect(me).toMatchObject({ valid: true, code: VerifyCode.VALID });
    expect(me.key).toMatchObject({ id: key.id, name: "me endpoint", metadata: { tier: "enterprise" }, createdBy: user.userId });
    expect(me.key?.createTime).toEqual(key.createTime);
    expect(me.key?.expireTime).toEqual(key.expireTime);
    expect(me.principal).toMatchObject({ organizationId: ORG, userId: user.userId, role: Role.MEMBER });
  });

  it("deletes a key: it stops working at once and leaves the list", async () => {
    const { key, secret } = await create("to delete", "pro");
    expect((await s.grpc.call("verifyKey", { key: secret })).valid).toBe(true);
    const deleted = await s.connect.revokeKey({ organizationId: ORG, actor: user, keyId: key.id, reason: "deleted by user" });
    expect(deleted.key?.state).toBe(KeyState.REVOKED);
    expect((await s.grpc.call("verifyKey", { key: secret })).code).toBe(VerifyCode.REVOKED);
    const list = await s.connect.listKeys({ organizationId: ORG, actor: user, pageSize: 1000 });
    expect(list.keys.map((k) => k.id)).not.toContain(key.id);
    // Deleting twice is harmless and returns the same revoked key.
    const again = await s.connect.revokeKey({ organizationId: ORG, actor: user, keyId: key.id });
    expect(again.key?.revokeTime).toEqual(deleted.key?.revokeTime);
  });
});
