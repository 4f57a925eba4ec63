import { describe, expect, it } from "vitest";
import { Role } from "../../gen/apikeys/v1/apikeys_pb.js";
import type { VerifyRecord } from "../../src/keys/records.js";
import { UNKNOWN, VerifyCache, buildEntry } from "../../src/keys/verify-cache.js";
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
  });

  it("is used only while trusted, and distrust drops everything", () => {
    const cache = cacheWith(entries);
    cache.distrust();
    expect(cache.get("h1", NOW)).toBeUndefined();
    cache.trustUntil(NOW + 1000);
    expect(cache.get("h1", NOW)).toBeUndefined(); // emptied, not hidden
    cache.set("h1", buildEntry(record("k1", "o1", "u1"), NOW), cache.generation, NOW);
    expect(cache.get("h1", NOW + 999)).toBeDefined();
    expect(cache.get("h1", NOW + 1000)).toBeUndefined(); // the lease ran out
  });
});
