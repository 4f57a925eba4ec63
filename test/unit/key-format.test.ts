import { describe, expect, it } from "vitest";
import {
  MAX_KEY_LENGTH,
  containsSecret,
  generateSecret,
  isValidPrefix,
  isWellFormed,
  prefixOf,
  previewOf,
  randomBase62,
} from "../../src/keys/key-format.js";

describe("key format", () => {
  it("mints <prefix>_<32 base62><6 base62 checksum> that passes its own check", () => {
    const key = generateSecret("trv_ak");
    expect(key).toMatch(/^trv_ak_[0-9A-Za-z]{38}$/);
    expect(isWellFormed(key)).toBe(true);
    expect(prefixOf(key)).toBe("trv_ak");
  });

  it("has at least 190 bits of randomness: 32 base62 characters, all distinct across many keys", () => {
    expect(32 * Math.log2(62)).toBeGreaterThanOrEqual(190);
    const seen = new Set(Array.from({ length: 2000 }, () => generateSecret("sk")));
    expect(seen.size).toBe(2000);
  });

  it("uses every base62 character without modulo bias (rough uniformity)", () => {
    const counts = new Map<string, number>();
    const sample = randomBase62(62 * 400);
    for (const c of sample) counts.set(c, (counts.get(c) ?? 0) + 1);
    expect(counts.size).toBe(62);
    for (const n of counts.values()) expect(n).toBeGreaterThan(250);
  });

  it("rejects a key with any single character changed (checksum)", () => {
    const key = generateSecret("sk");
    for (let i = 0; i < key.length; i++) {
      const c = key[i] === "a" ? "b" : "a";
      const altered = key.slice(0, i) + c + key.slice(i + 1);
      expect(isWellFormed(altered), `changed at ${i}`).toBe(false);
    }
  });

  it("rejects wrong shapes", () => {
    const key = generateSecret("sk");
    for (const bad of [
      "",
      "sk_",
      key.slice(0, -1),
      key + "0",
      key.toUpperCase(),
      key.replace("sk_", "sk-"),
      "Sk" + key.slice(2),
      "1k" + key.slice(2),
      "x".repeat(MAX_KEY_LENGTH + 1),
      key.slice(0, 10) + "é" + key.slice(11),
    ]) {
      expect(isWellFormed(bad), bad).toBe(false);
    }
  });

  it("accepts the longest prefix and prefixes with underscores", () => {
    const key = generateSecret("a234567890123_5_");
    expect(key.length).toBe(MAX_KEY_LENGTH);
    expect(isWellFormed(key)).toBe(true);
    expect(prefixOf(key)).toBe("a234567890123_5_");
  });

  it("validates prefixes", () => {
    for (const ok of ["sk", "a", "trv_ak", "pk_live_2"]) expect(isValidPrefix(ok), ok).toBe(true);
    for (const bad of ["", "Sk", "1a", "_a", "a-b", "abcdefghijklmnopq", "sk "]) expect(isValidPrefix(bad), bad).toBe(false);
  });

  it("previews show the prefix, 4 random characters and the last 4, and never the secret", () => {
    const key = generateSecret("trv_ak");
    const preview = previewOf(key);
    expect(preview).toBe(`${key.slice(0, 11)}…${key.slice(-4)}`);
    expect(preview).not.toContain(key.slice(11, -4));
  });

  it("finds a key inside other text, and nothing in text without one", () => {
    const key = generateSecret("trv_ak");
    expect(containsSecret(key)).toBe(true);
    expect(containsSecret(`Bearer ${key}`)).toBe(true);
    expect(containsSecret(`id=${key}&x=1`)).toBe(true);
    expect(containsSecret(key.slice(0, -1))).toBe(false);
    expect(containsSecret("key_2x9T0123456789abcdefghij")).toBe(false);
  });

  it("finds a key followed directly by letters or digits, or run into other keys (the review's miss)", () => {
    const key = generateSecret("sk");
    for (const text of [`${key}0`, `${key}X`, `${key}abc123`, `x${key}9`, `${key}${generateSecret("sk")}`, `${"A".repeat(50)}_${key}zz`, `__${key}_`]) {
      expect(containsSecret(text), text).toBe(true);
    }
    // Random text of the same alphabet is not a key (the checksum makes a false alarm one in four billion).
    for (let i = 0; i < 200; i++) expect(containsSecret(`sk_${generateSecret("sk").slice(3, -6)}zzzzzz`)).toBe(false);
  });
});
