import { create, equals, isMessage, toBinary, toJson } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { describe, expect, it } from "vitest";
import {
  ApiKeyService,
  KeyState,
  RateLimitStateSchema,
  Role,
  VerifyCode,
  type VerifyKeyResponse,
  VerifyKeyResponseSchema,
} from "../../gen/apikeys/v1/apikeys_pb.js";
import { SecretHasher } from "../../src/keys/hashing.js";
import { generateSecret } from "../../src/keys/key-format.js";
import { LastUsedTracker } from "../../src/keys/last-used.js";
import { toApiKey, toPrincipal } from "../../src/keys/mapping.js";
import type { VerifyRecord } from "../../src/keys/records.js";
import { Verifier } from "../../src/keys/verifier.js";
import { ENCODING, type EncodedVerifyKeyResponse } from "../../src/keys/answer.js";
import { UNKNOWN, VerifyCache, type VerifyEntry, buildEntry } from "../../src/keys/verify-cache.js";
import type { UsageLimiter, UsageOutcome } from "../../src/keys/ports.js";
import type { Store } from "../../src/keys/ports.js";
import { serviceDefinition } from "../../src/transport/grpc-server.js";
import { keyRecord } from "../helpers/records.js";

const NOW = 1_800_000_000_000;

function record(id: string, org: string, user: string): VerifyRecord {
  const key = keyRecord({ id, organizationId: org, createdBy: user, name: id, preview: "sk_…", createTime: NOW, updateTime: NOW });
  return { key, secretExpireTime: null, memberRole: Role.MEMBER, orgEnabled: true };
}

function cacheWith(entries: [string, VerifyRecord][], maxEntries = 1000): VerifyCache {
  const cache = new VerifyCache({ maxEntries, ttlMs: 60_000, negativeTtlMs: 1000 });
  for (const [hash, rec] of entries) cache.set(hash, buildEntry(rec, NOW), cache.generation, NOW);
  return cache;
}

describe("verification cache", () => {
  const entries: [string, VerifyRecord][] = [
    ["h1", record("k1", "o1", "u1")],
    ["h1b", record("k1", "o1", "u1")], // a second live secret of k1 (rotation grace)
    ["h2", record("k2", "o1", "u2")],
    ["h3", record("k3", "o2", "u1")],
  ];
  const present = (c: VerifyCache) => ["h1", "h1b", "h2", "h3"].filter((h) => c.get(h, NOW) !== undefined);

  it("evicts every secret of a changed key, and nothing else", () => {
    const cache = cacheWith(entries);
    cache.apply({ kind: "keys", keyIds: ["k1"] });
    expect(present(cache)).toEqual(["h2", "h3"]);
  });

  it("evicts a member's keys in that organization only", () => {
    const cache = cacheWith(entries);
    cache.apply({ kind: "member", organizationId: "o1", userId: "u1" });
    expect(present(cache)).toEqual(["h2", "h3"]);
  });

  it("evicts an organization's keys", () => {
    const cache = cacheWith(entries);
    cache.apply({ kind: "org", organizationId: "o1" });
    expect(present(cache)).toEqual(["h3"]);
  });

  it("keeps its indexes in step with LRU eviction and overwrites", () => {
    const cache = cacheWith(entries, 2); // only h2 and h3 survive
    expect(present(cache)).toEqual(["h2", "h3"]);
    cache.set("h3", buildEntry(record("k9", "o9", "u9"), NOW), cache.generation, NOW); // h3 now holds k9
    cache.apply({ kind: "keys", keyIds: ["k3"] });
    expect(present(cache)).toEqual(["h2", "h3"]);
    cache.apply({ kind: "org", organizationId: "o9" });
    expect(present(cache)).toEqual(["h2"]);
  });

  it("does not store a load that started before an invalidation", () => {
    const cache = cacheWith([]);
    const generation = cache.generation;
    cache.apply({ kind: "keys", keyIds: ["k1"] });
    cache.set("h1", buildEntry(record("k1", "o1", "u1"), NOW), generation, NOW);
    expect(cache.get("h1", NOW)).toBeUndefined();
  });

  it("remembers unknown hashes, shorter", () => {
    const cache = cacheWith([]);
    cache.set("nope", UNKNOWN, cache.generation, NOW);
    expect(cache.get("nope", NOW)).toBe(UNKNOWN);
    expect(cache.get("nope", NOW + 1000)).toBe(UNKNOWN);
    expect(cache.get("nope", NOW + 1001)).toBeUndefined(); // negativeTtlMs
  });

  it("forgets a key after its TTL, by the clock it is given", () => {
    const cache = cacheWith(entries);
    expect(cache.get("h1", NOW + 60_000)).toBeDefined();
    expect(cache.get("h1", NOW + 60_001)).toBeUndefined(); // ttlMs
    cache.set("h1", buildEntry(record("k1", "o1", "u1"), NOW + 60_001), cache.generation, NOW + 60_001);
    expect(cache.get("h1", NOW + 120_000)).toBeDefined(); // a new load starts a new TTL
  });

  it("is used only while trusted, and distrust drops everything", () => {
    let monotonic = 5000;
    const cache = new VerifyCache({ maxEntries: 1000, ttlMs: 60_000, negativeTtlMs: 1000, monotonicNow: () => monotonic });
    cache.set("h1", buildEntry(record("k1", "o1", "u1"), NOW), cache.generation, NOW);
    cache.distrust();
    expect(cache.get("h1", NOW)).toBeUndefined();
    cache.trustUntil(monotonic + 1000);
    expect(cache.get("h1", NOW)).toBeUndefined(); // emptied, not hidden
    cache.set("h1", buildEntry(record("k1", "o1", "u1"), NOW), cache.generation, NOW);
    monotonic += 999;
    expect(cache.get("h1", NOW)).toBeDefined();
    monotonic += 1;
    expect(cache.get("h1", NOW)).toBeUndefined(); // the lease ran out
    // The lease follows the monotonic clock only: a wall-clock step back does not extend it.
    expect(cache.get("h1", NOW - 3_600_000)).toBeUndefined();
  });
});

/** The answer for `rec` and `code`, built the plain way: what the cached bytes must encode. */
function expected(rec: VerifyRecord, code: VerifyCode, usage: Omit<UsageOutcome, "verdict"> = {}, now = NOW): VerifyKeyResponse {
  const key = toApiKey(rec.key, now);
  if (code === VerifyCode.EXPIRED && key.state === KeyState.ACTIVE) key.state = KeyState.EXPIRED;
  return create(VerifyKeyResponseSchema, { valid: code === VerifyCode.VALID, code, key, principal: toPrincipal(rec), ...usage });
}

const encode = (m: VerifyKeyResponse) => Buffer.from(toBinary(VerifyKeyResponseSchema, m));
const bytesOf = (m: VerifyKeyResponse) => (m as EncodedVerifyKeyResponse)[ENCODING];

/** A key with every field the answer carries set. */
function fullRecord(fields: Partial<VerifyRecord["key"]> = {}, extra: Partial<VerifyRecord> = {}): VerifyRecord {
  const key = keyRecord({
    projectId: "proj_1",
    scopes: ["documents:read", "billing:*"],
    expireTime: NOW + 3_600_000,
    lastUsedTime: NOW - 5000,
    rotateTime: NOW - 60_000,
    previousSecretExpireTime: NOW + 60_000,
    metadata: { team: "search", env: "prod" },
    limits: { requestsPerMinute: 60, requestsPerDay: 1000, monthlyCredits: 5000 },
    ...fields,
  });
  return { key, secretExpireTime: null, memberRole: Role.ADMIN, orgEnabled: true, ...extra };
}

describe("cached answers", () => {
  const cases: [string, VerifyRecord, VerifyCode][] = [
    ["valid", fullRecord(), VerifyCode.VALID],
    ["revoked", fullRecord({ revokeTime: NOW - 1000, revokedBy: "u_admin", revokeReason: "leaked" }), VerifyCode.REVOKED],
    ["organization off", fullRecord({}, { orgEnabled: false }), VerifyCode.DISABLED],
    ["creator gone", fullRecord({}, { memberRole: null }), VerifyCode.DISABLED],
    ["plain", record("k1", "o1", "u1"), VerifyCode.VALID],
  ];

  it.each(cases)("are the encoding of the whole response (%s)", (_, rec, code) => {
    const answer = buildEntry(rec, NOW).answer;
    expect(answer.code).toBe(code);
    expect(answer[ENCODING].equals(encode(expected(rec, code)))).toBe(true);
  });

  it.each(cases)("read as the message they encode, for Connect and ext_authz (%s)", (_, rec, code) => {
    const answer = buildEntry(rec, NOW).answer as VerifyKeyResponse;
    const want = expected(rec, code);
    expect(isMessage(answer, VerifyKeyResponseSchema)).toBe(true);
    expect(equals(VerifyKeyResponseSchema, answer, want)).toBe(true);
    expect(encode(answer).equals(encode(want))).toBe(true);
    expect(toJson(VerifyKeyResponseSchema, answer)).toEqual(toJson(VerifyKeyResponseSchema, want));
    expect(answer.valid).toBe(code === VerifyCode.VALID);
    expect(answer.key?.id).toBe(rec.key.id);
    expect(answer.principal?.userId).toBe(rec.key.createdBy);
  });

  it("are what the gRPC transport sends, as they are", () => {
    const answer = buildEntry(fullRecord(), NOW).answer;
    const serialize = serviceDefinition(ApiKeyService).verifyKey.responseSerialize;
    expect(serialize(answer)).toBe(answer[ENCODING]);
  });

  it("share scope lists and ids between entries", () => {
    const a = buildEntry(record("k1", "o1", "u1"), NOW);
    const b = buildEntry(record("k2", `o${1}`, `u${1}`), NOW);
    expect(b.scopes).toBe(a.scopes);
    expect(b.organizationId).toBe(a.organizationId);
    expect(b.createdBy).toBe(a.createdBy);
  });
});

describe("verification answers", () => {
  const hasher = new SecretHasher("a-unit-test-pepper-0123456789");

  function verifierFor(rec: VerifyRecord, usage?: UsageOutcome) {
    const clock = { now: NOW };
    const store = { findByHash: async () => rec } as unknown as Store;
    const limiter: UsageLimiter | null = usage ? { consume: async () => usage } : null;
    const cache = new VerifyCache({ maxEntries: 100, ttlMs: 3_600_000, negativeTtlMs: 1000 });
    const verifier = new Verifier({ store, hasher, cache, lastUsed: new LastUsedTracker(store, 60_000), limiter, now: () => clock.now });
    return { verifier, clock, key: generateSecret("sk") };
  }

  it("reuse one prebuilt answer per code, the same bytes as a fresh encoding", async () => {
    const rec = fullRecord({ limits: null });
    const { verifier, clock, key } = verifierFor(rec);
    const first = await verifier.verify({ key, requiredScopes: ["documents:read"] } as never);
    const again = verifier.verify({ key, requiredScopes: ["billing:write"] } as never);
    expect(again).toBe(first);
    expect(bytesOf(first).equals(encode(expected(rec, VerifyCode.VALID)))).toBe(true);

    const denied = verifier.verify({ key, requiredScopes: ["admin:write"] } as never) as VerifyKeyResponse;
    expect(denied.code).toBe(VerifyCode.INSUFFICIENT_SCOPE);
    expect(bytesOf(denied).equals(encode(expected(rec, VerifyCode.INSUFFICIENT_SCOPE)))).toBe(true);
    expect(verifier.verify({ key, requiredScopes: ["admin:write"] } as never)).toBe(denied);

    clock.now = rec.key.expireTime!;
    const expired = verifier.verify({ key, requiredScopes: [] } as never) as VerifyKeyResponse;
    expect(expired.code).toBe(VerifyCode.EXPIRED);
    expect(expired.key?.state).toBe(KeyState.EXPIRED);
    expect(bytesOf(expired).equals(encode(expected(rec, VerifyCode.EXPIRED)))).toBe(true);
  });

  it("expire with the rotated-out secret, not only with the key", async () => {
    const rec = fullRecord({ expireTime: null }, { secretExpireTime: NOW + 1000 });
    const { verifier, clock, key } = verifierFor(rec);
    expect((await verifier.verify({ key, requiredScopes: [] } as never)).code).toBe(VerifyCode.VALID);
    clock.now = NOW + 1000;
    expect((verifier.verify({ key, requiredScopes: [] } as never) as VerifyKeyResponse).code).toBe(VerifyCode.EXPIRED);
  });

  it("with usage data are the encoding of the whole response", async () => {
    const rec = fullRecord();
    const usage: UsageOutcome = {
      verdict: "rate_limited",
      remainingCredits: 4321n,
      rateLimit: create(RateLimitStateSchema, { limit: 60, remaining: 0, resetTime: timestampFromMs(NOW + 30_000) }),
    };
    const { verifier, key } = verifierFor(rec, usage);
    for (let i = 0; i < 2; i++) {
      const res = await verifier.verify({ key, requiredScopes: ["billing:write"], cost: 1 } as never);
      const want = expected(rec, VerifyCode.RATE_LIMITED, { remainingCredits: usage.remainingCredits, rateLimit: usage.rateLimit });
      expect(res.code).toBe(VerifyCode.RATE_LIMITED);
      expect(bytesOf(res).equals(encode(want))).toBe(true);
      expect(encode(res).equals(encode(want))).toBe(true);
      expect(res.remainingCredits).toBe(4321n);
      expect(res.principal?.projectId).toBe("proj_1");
    }
  });
});

describe("answer slabs", () => {
  /** n entries o<i % 4>/k<i> cached under h<i>, with what their answers must say. */
  function filled(n: number, maxEntries = 10_000) {
    const cache = new VerifyCache({ maxEntries, ttlMs: 60_000, negativeTtlMs: 1000 });
    const want = new Map<string, Buffer>();
    const entries = new Map<string, VerifyEntry>();
    for (let i = 0; i < n; i++) {
      const rec = record(`k${i}`, `o${i % 4}`, "u1");
      const entry = buildEntry(rec, NOW);
      cache.set(`h${i}`, entry, cache.generation, NOW);
      want.set(`h${i}`, encode(expected(rec, VerifyCode.VALID)));
      entries.set(`h${i}`, entry);
    }
    const check = () => {
      for (const [hash, bytes] of want) {
        const value = cache.get(hash, NOW);
        if (value !== undefined) expect((value as VerifyEntry).answer[ENCODING].equals(bytes)).toBe(true);
      }
    };
    return { cache, want, entries, check };
  }

  it("hold the answers of many entries in few buffers", () => {
    const { entries, check } = filled(300);
    const buffers = new Set([...entries.values()].map((e) => e.answer[ENCODING].buffer));
    expect(buffers.size).toBeLessThan(20);
    check();
  });

  it("move the last answers out of a mostly empty slab, and never rewrite bytes", () => {
    const { cache, entries, want, check } = filled(600);
    const first = entries.get("h0")!.answer[ENCODING];
    const sameSlab = [...entries].filter(([, e]) => e.answer[ENCODING].buffer === first.buffer).map(([h]) => h);
    expect(sameSlab.length).toBeGreaterThan(10);
    // Drop all but two entries of that slab: it is then mostly empty, so the two move.
    const [keep1, keep2, ...drop] = sameSlab;
    cache.apply({ kind: "keys", keyIds: drop.map((h) => `k${h.slice(1)}`) });
    for (const h of [keep1, keep2]) {
      const answer = entries.get(h)!.answer;
      expect(answer[ENCODING].buffer).not.toBe(first.buffer);
      expect(answer[ENCODING].equals(want.get(h)!)).toBe(true);
    }
    // Whoever still held the old bytes holds them unchanged.
    expect(first.equals(want.get("h0")!)).toBe(true);
    check();
  });

  it("stay correct through LRU eviction, overwrites and distrust", () => {
    const { cache, check } = filled(2000, 150);
    expect(cache.size).toBe(150);
    check();
    for (let i = 1990; i < 2000; i++) cache.set(`h${i}`, buildEntry(record(`k${i}`, `o${i % 4}`, "u1"), NOW), cache.generation, NOW);
    check();
    cache.distrust();
    cache.trustUntil(performance.now() + 60_000);
    expect(cache.size).toBe(0);
    cache.set("h1", buildEntry(record("k1", "o1", "u1"), NOW), cache.generation, NOW);
    check();
  });
});
