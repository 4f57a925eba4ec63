import { describe, expect, it } from "vitest";
import { unsupportedServer } from "../../src/store/migrate.js";

describe("unsupportedServer", () => {
  it("refuses a server whose binary log records statements, saying what to set", () => {
    expect(unsupportedServer(true, "STATEMENT")).toMatch(/binlog_format=STATEMENT.*set binlog_format=ROW or MIXED/);
    expect(unsupportedServer(true, "statement")).not.toBeNull();
  });

  it("accepts row or mixed logging, and any format while the binary log is off", () => {
    expect(unsupportedServer(true, "ROW")).toBeNull();
    expect(unsupportedServer(true, "MIXED")).toBeNull();
    expect(unsupportedServer(false, "STATEMENT")).toBeNull();
  });
});
