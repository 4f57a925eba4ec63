import type { Actor } from "../../gen/apikeys/v1/apikeys_pb.js";
import type { CallContext } from "./call-context.js";
import { randomBase62 } from "./key-format.js";
import type { AuditRecord } from "./records.js";

/** An audit event for a management action; written by the store with the change itself. */
export function auditEvent(
  call: CallContext,
  actor: Actor | undefined,
  organizationId: string,
  action: string,
  now: number,
  keyId = "",
  details: Record<string, string> = {},
): AuditRecord {
  return {
    id: `evt_${randomBase62(20)}`,
    organizationId,
    time: now,
    actorUserId: actor?.userId ?? "",
    actorRole: actor?.role ?? 0,
    caller: call.caller,
    action,
    keyId,
    details,
  };
}
