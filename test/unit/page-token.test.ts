import { describe, expect, it } from "vitest";
import { decodePageToken, encodePageToken } from "../../src/keys/page-token.js";

describe("page tokens", () => {
  const filters = ["org_1", "", "", false];

  it("round-trip a position and are opaque", () => {
    const token = encodePageToken("12345", filters);
    expect(token).not.toContain("12345");
    expect(decodePageToken(token, filters)).toBe("12345");
  });

  it("are empty at the end and decode to the first page when empty", () => {
    expect(encodePageToken(null, filters)).toBe("");
    expect(decodePageToken("", filters)).toBeNull();
  });

  it("refuse a token issued for other filters", () => {
    const token = encodePageToken("7", filters);
    expect(() => decodePageToken(token, ["org_2", "", "", false])).toThrow(/different filters/);
  });

  it("refuse garbage", () => {
    for (const bad of ["x", "%%%", Buffer.from('{"p":"1; drop"}').toString("base64url"), "a".repeat(600)]) {
      expect(() => decodePageToken(bad, filters)).toThrow(/page_token/);
    }
  });
});
