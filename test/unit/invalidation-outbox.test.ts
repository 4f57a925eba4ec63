// The outbox worker: a change whose broadcast failed is announced by whichever
// instance can, once its row is older than the poll interval; announced rows are deleted.
import { describe, expect, it } from "vitest";
import { InvalidationOutbox } from "../../src/broadcast/outbox.js";
import type { Invalidation } from "../../src/keys/ports.js";
import { createLogger } from "../../src/logger.js";
import { MemoryStore } from "../../src/store/memory-store.js";
import { T0, auditRecord } from "../helpers/records.js";

const logger = createLogger("silent");

describe("invalidation outbox", () => {
  it("a change whose broadcast failed is published by a healthy instance after the poll interval, then deleted", async () => {
    const store = new MemoryStore();
    let now = T0;
    const invalidation: Invalidation = { kind: "org", organizationId: "org_o" };
    const audit = auditRecord("org_o", "org.disable_api", { time: now });
    await store.setApiAccess({ organizationId: "org_o", enabled: false, now, audit, invalidation });

    // The revoking instance: its broadcast fails, the caller gets the error, the row stays.
    const failing = new InvalidationOutbox({
      invalidator: { invalidate: () => Promise.reject(new Error("redis unavailable")) },
      healthy: () => false,
      store,
      logger,
      pollMs: 1000,
      now: () => now,
    });
    await expect(failing.invalidate(invalidation, { organizationId: "org_o", id: audit.id })).rejects.toThrow("redis unavailable");
    await failing.poll();
    expect(await store.pendingInvalidations(now + 1, 10)).toHaveLength(1);

    // Another instance, healthy: nothing before the row is a poll interval old, then published once and deleted.
    const announced: Invalidation[] = [];
    const healthy = new InvalidationOutbox({
      invalidator: { invalidate: async (e) => void announced.push(e) },
      healthy: () => true,
      store,
      logger,
      pollMs: 1000,
      now: () => now,
    });
    now += 999;
    await healthy.poll();
    expect(announced).toEqual([]);
    now += 2;
    await healthy.poll();
    expect(announced).toEqual([invalidation]);
    expect(await store.pendingInvalidations(now + 1, 10)).toEqual([]);
    await healthy.poll();
    expect(announced).toHaveLength(1);
  });

  it("a change announced by its own call is deleted, and not published again", async () => {
    const store = new MemoryStore();
    const invalidation: Invalidation = { kind: "org", organizationId: "org_p" };
    const audit = auditRecord("org_p", "org.disable_api", { time: T0 });
    await store.setApiAccess({ organizationId: "org_p", enabled: false, now: T0, audit, invalidation });
    const announced: Invalidation[] = [];
    const outbox = new InvalidationOutbox({
      invalidator: { invalidate: async (e) => void announced.push(e) },
      healthy: () => true,
      store,
      logger,
      pollMs: 1000,
      now: () => T0 + 10_000,
    });
    await outbox.invalidate(invalidation, { organizationId: "org_p", id: audit.id });
    await outbox.poll();
    expect(announced).toEqual([invalidation]);
    expect(await store.pendingInvalidations(T0 + 10_000, 10)).toEqual([]);
  });
});
