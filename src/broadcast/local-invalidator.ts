// The in-process invalidator: applies changes to this instance's cache only.
// It is all a single instance (dev mode, tests) needs.
import type { Invalidation, Invalidator } from "../keys/ports.js";
import type { VerifyCache } from "../keys/verify-cache.js";

export class LocalInvalidator implements Invalidator {
  constructor(private readonly cache: VerifyCache | null) {}

  async invalidate(event: Invalidation): Promise<void> {
    this.cache?.apply(event);
  }
}
