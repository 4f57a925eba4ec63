// What every product scenario checks the same way, in one place: a key's
// secret is shown once and never again, an idempotent retry returns the same
// key without it, concurrent retries create exactly one key, and errors carry
// the status code and ErrorInfo reason callers rely on.
import { type MessageInitShape, toJsonString } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { expect } from "vitest";
import {
  type ApiKey,
  type CreateKeyRequestSchema,
  GetKeyResponseSchema,
  ListKeysResponseSchema,
  type VerifyKeyResponse,
} from "../../../gen/apikeys/v1/apikeys_pb.js";
import { ErrorInfoSchema } from "../../../gen/google/rpc/error_details_pb.js";
import type { TestServer } from "../../helpers/server.js";

export type CreateInit = MessageInitShape<typeof CreateKeyRequestSchema>;

/** The part of a secret that its preview does not show: finding it anywhere means the secret leaked. */
function hiddenPart(secret: string): string {
  return secret.slice(-34, -4);
}

/**
 * Creates a key with a request id and checks that the secret is shown once:
 * neither GetKey nor ListKeys (as the creator sees them) contain it, and a
 * retry with the same request id returns the same key with an empty secret.
 */
export async function createShownOnce(s: TestServer, req: CreateInit & { requestId: string }): Promise<{ key: ApiKey; secret: string }> {
  const { key, secret } = await s.connect.createKey(req);
  if (req.prefix) expect(key!.prefix).toBe(req.prefix);
  expect(secret).toMatch(new RegExp(`^${key!.prefix}_[0-9A-Za-z]{38}$`));
  expect(key!.preview).toBe(`${secret.slice(0, -34)}…${secret.slice(-4)}`);

  const got = await s.connect.getKey({ organizationId: req.organizationId, keyId: key!.id, actor: req.actor });
  const listed = await s.connect.listKeys({ organizationId: req.organizationId, actor: req.actor, showRevoked: true, pageSize: 1000 });
  expect(listed.keys.map((k) => k.id)).toContain(key!.id);
  for (const json of [toJsonString(GetKeyResponseSchema, got), toJsonString(ListKeysResponseSchema, listed)]) {
    expect(json).not.toContain(hiddenPart(secret));
  }

  const retry = await s.connect.createKey(req);
  expect(retry.key?.id).toBe(key!.id);
  expect(retry.secret).toBe("");
  return { key: key!, secret };
}

/**
 * Ten concurrent retries of one create (over gRPC, so they really run at the
 * same time) make exactly one key, and exactly one of them sees its secret.
 */
export async function concurrentRetriesCreateOne(s: TestServer, req: CreateInit & { requestId: string }): Promise<void> {
  const results = await Promise.all(Array.from({ length: 10 }, () => s.grpc.call("createKey", req)));
  const ids = new Set(results.map((r) => r.key!.id));
  expect(ids.size).toBe(1);
  const withSecret = results.filter((r) => r.secret !== "");
  expect(withSecret).toHaveLength(1);
  expect((await s.grpc.call("verifyKey", { key: withSecret[0].secret })).valid).toBe(true);
  const named = await s.connect.listKeys({
    organizationId: req.organizationId,
    actor: req.actor,
    createdBy: req.actor!.userId,
    showRevoked: true,
    pageSize: 1000,
  });
  expect(named.keys.filter((k) => k.name === req.name).map((k) => k.id)).toEqual([...ids]);
}

/** Awaits a call that must fail; checks its code, ErrorInfo reason and (optionally) message. */
export async function expectError(call: Promise<unknown>, code: Code, reason: string, message?: RegExp): Promise<ConnectError> {
  const err = ConnectError.from(
    await call.then(
      () => {
        throw new Error(`expected the call to fail with ${reason}`);
      },
      (e: unknown) => e,
    ),
  );
  expect(err.code, err.message).toBe(code);
  expect(err.findDetails(ErrorInfoSchema)[0]?.reason, err.message).toBe(reason);
  if (message) expect(err.rawMessage).toMatch(message);
  return err;
}

/** A PERMISSION_DENIED whose message and ErrorInfo name the policy rule that refused the call. */
export async function expectDenied(call: Promise<unknown>, rule: string): Promise<void> {
  const err = await expectError(call, Code.PermissionDenied, "ROLE_TOO_LOW", new RegExp(`policy rule ${rule}\\b`));
  expect(err.findDetails(ErrorInfoSchema)[0]?.metadata.rule).toBe(rule);
}

/**
 * Verifies a key until the answer came from this server's cache (it trusts
 * its cache once its first Redis ping is back), so a later check that a
 * change is seen "at once" proves the cache was told, not merely missed.
 */
export async function verifyCached(s: TestServer, key: string, requiredScopes: string[] = []): Promise<VerifyKeyResponse> {
  const cache = s.app.cache!;
  const deadline = Date.now() + 5000;
  for (;;) {
    const hits = cache.hits;
    // Over Connect: its client carries the caller token when the server is started with one.
    const res = await s.connect.verifyKey({ key, requiredScopes });
    if (cache.hits > hits) return res;
    if (Date.now() > deadline) throw new Error("the verification cache never answered");
    await new Promise((r) => setTimeout(r, 20));
  }
}
