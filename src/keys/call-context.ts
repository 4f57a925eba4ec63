/** Who is calling the service: the authenticated service caller, for the audit trail. */
export interface CallContext {
  /** The caller's configured name, e.g. "web" ("anonymous" when unauthenticated callers are allowed). */
  caller: string;
}
