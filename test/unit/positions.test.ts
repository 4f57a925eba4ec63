import { describe, expect, it } from "vitest";
import { POSITION_EPOCH, nextPosition } from "../../src/store/positions.js";

describe("nextPosition", () => {
  it("grows strictly, also when the clock stands still or goes back", () => {
    const t = Date.UTC(2027, 0, 1);
    const seen = [nextPosition(t), nextPosition(t), nextPosition(t - 5000), nextPosition(t + 1)];
    for (let i = 1; i < seen.length; i++) expect(seen[i]).toBeGreaterThan(seen[i - 1]);
  });

  it("orders by time across processes: a later millisecond is always larger, whatever the low bits", () => {
    const t = Date.UTC(2028, 0, 1);
    const a = nextPosition(t);
    const b = nextPosition(t + 1);
    expect(b >> 22n).toBe(BigInt(t + 1 - POSITION_EPOCH));
    expect(b).toBeGreaterThan(a);
  });

  it("fits a page token (at most 20 digits) and an unsigned BIGINT until 2089", () => {
    const far = nextPosition(Date.UTC(2089, 0, 1));
    expect(far).toBeLessThan(2n ** 63n);
    expect(String(far)).toMatch(/^\d{1,20}$/);
  });
});
