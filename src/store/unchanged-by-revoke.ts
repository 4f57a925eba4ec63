// What both stores answer when a revoke's write matched nothing (see Store.revokeKey).
import type { RevokePermission } from "../keys/ports.js";
import type { KeyRecord } from "../keys/records.js";

/**
 * A revoke whose write matched nothing: the refusal if the actor may not
 * revoke this key, else the key as it is (revoked before).
 */
export function unchangedByRevoke(key: KeyRecord, permission: RevokePermission): { key: KeyRecord; changed: false } {
  permission.check(key);
  if (key.revokeTime === null) {
    throw new Error(`revoking key ${key.id} changed nothing, yet it is not revoked and the policy lets the actor revoke it`);
  }
  return { key, changed: false };
}
