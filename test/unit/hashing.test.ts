import { createHash, createHmac } from "node:crypto";
import { describe, expect, it } from "vitest";
import { SecretHasher } from "../../src/keys/hashing.js";
import { generateSecret } from "../../src/keys/key-format.js";

const PEPPER = "unit-test-pepper-0123456789";

describe("SecretHasher", () => {
  it("stores and looks up the HMAC-SHA256 of a secret under the pepper, never a plain hash", () => {
    const hasher = new SecretHasher(PEPPER);
    const secret = generateSecret("sk");
    expect(hasher.hash(secret).equals(createHmac("sha256", PEPPER).update(secret).digest())).toBe(true);
    expect(hasher.hash(secret).equals(createHash("sha256").update(secret).digest())).toBe(false);
    expect(new SecretHasher("another-pepper-0123456789").hash(secret).equals(hasher.hash(secret))).toBe(false);
  });

  it("identifies a secret in the cache by its SHA-256: 32 latin1 characters, one per secret", () => {
    const hasher = new SecretHasher(PEPPER);
    const secrets = Array.from({ length: 1000 }, () => generateSecret("sk"));
    for (const secret of secrets.slice(0, 10)) {
      const key = hasher.cacheKey(secret);
      expect(key).toHaveLength(32);
      expect(Buffer.from(key, "latin1").equals(createHash("sha256").update(secret, "utf8").digest())).toBe(true);
    }
    expect(new Set(secrets.map((s) => hasher.cacheKey(s))).size).toBe(1000);
    // Not the stored hash: what the cache holds does not match a database row.
    expect(Buffer.from(hasher.cacheKey(secrets[0]), "latin1").equals(hasher.hash(secrets[0]))).toBe(false);
  });

  it("hashes under the previous pepper only while a rotation is in progress", () => {
    const secret = generateSecret("sk");
    expect(new SecretHasher(PEPPER).previousHash(secret)).toBeNull();
    const previous = "old-pepper-0123456789abcdef";
    const rotating = new SecretHasher(PEPPER, previous);
    expect(rotating.previousHash(secret)!.equals(createHmac("sha256", previous).update(secret).digest())).toBe(true);
  });
});
