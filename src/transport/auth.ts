// Service callers: who may call this service at all, and which half of it.
// Callers send `authorization: Bearer <token>` (gRPC metadata or HTTP header).
// Tokens are looked up by their SHA-256, so the comparison never depends on
// how much of a guessed token is right, and no token is kept in a map.
import { createHash, timingSafeEqual } from "node:crypto";
import type { CallContext } from "../keys/call-context.js";
import { ApiError, Status } from "../keys/errors.js";

export type Access = "manage" | "verify";

export interface CallerConfig {
  name: string;
  token: string;
  allow: Access[];
}

export interface Caller {
  readonly name: string;
  readonly allow: ReadonlySet<Access>;
  /** Built once per caller, handed to every call it makes. */
  readonly context: CallContext;
}

function caller(name: string, allow: Access[]): Caller {
  return { name, allow: new Set(allow), context: { caller: name } };
}

const ANONYMOUS = caller("anonymous", ["manage", "verify"]);

function digest(token: string): Buffer {
  return createHash("sha256").update(token, "utf8").digest();
}

export class CallerAuth {
  private readonly byDigest = new Map<string, { digest: Buffer; caller: Caller }>();
  private readonly allowAnonymous: boolean;

  constructor(callers: CallerConfig[], allowUnauthenticated: boolean) {
    for (const c of callers) {
      const d = digest(c.token);
      this.byDigest.set(d.toString("latin1"), { digest: d, caller: caller(c.name, c.allow) });
    }
    this.allowAnonymous = allowUnauthenticated && callers.length === 0;
  }

  /**
   * The caller behind an authorization header value, allowed `access`.
   * Throws UNAUTHENTICATED (no or unknown token) or PERMISSION_DENIED.
   */
  authorize(authorization: string | undefined, access: Access): Caller {
    if (this.allowAnonymous) return ANONYMOUS;
    const caller = this.authenticate(authorization);
    if (!caller.allow.has(access)) {
      throw new ApiError(
        Status.PERMISSION_DENIED,
        "CALLER_NOT_ALLOWED",
        `caller "${caller.name}" is not allowed to ${access === "manage" ? "manage keys" : "verify keys"}`,
        { caller: caller.name, access },
      );
    }
    return caller;
  }

  private authenticate(authorization: string | undefined): Caller {
    if (!authorization) throw unauthenticated("missing authorization: send `authorization: Bearer <token>`");
    const match = /^Bearer\s+(\S+)\s*$/i.exec(authorization);
    if (!match) throw unauthenticated("authorization must be `Bearer <token>`");
    const d = digest(match[1]);
    const found = this.byDigest.get(d.toString("latin1"));
    if (!found || !timingSafeEqual(found.digest, d)) throw unauthenticated("unknown caller token");
    return found.caller;
  }
}

function unauthenticated(message: string): ApiError {
  return new ApiError(Status.UNAUTHENTICATED, "CALLER_UNAUTHENTICATED", message);
}
