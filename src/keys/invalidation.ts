// What changed in a way that affects verification. The service announces each
// change through the Invalidator before the RPC that made it returns; the
// broadcast implementation makes every instance drop what it cached.
export type Invalidation =
  | { kind: "keys"; keyIds: string[] }
  | { kind: "member"; organizationId: string; userId: string }
  | { kind: "org"; organizationId: string };

export interface Invalidator {
  /** Resolves once no instance will answer from stale state any more. */
  invalidate(event: Invalidation): Promise<void>;
}
