// Service callers: who may call this service at all, and which half of it.
// A caller proves who it is with a bearer token (`authorization: Bearer
// <token>`, gRPC metadata or HTTP header, both ports) or, on the gRPC port
// with mutual TLS, with its client certificate (see tls.ts). Tokens are
// looked up by their SHA-256, so the comparison never depends on how much of
// a guessed token is right, and no token is kept in a map; CALLERS may hold
// only the digest (token_sha256), so the configuration holds no token at all.
//
// What a caller may do: `verify` (VerifyKey, Envoy ext_authz), `manage` (key
// management), `admin` (OrganizationService: members' roles, API access, the
// audit trail), each only in its organizations when it has a list of them.
import { createHash, timingSafeEqual } from "node:crypto";
import { type CallContext, OrganizationScope } from "../keys/call-context.js";
import { ApiError, Status } from "../keys/errors.js";

export type Access = "manage" | "verify" | "admin";

export const ACCESS_NAMES: Record<Access, string> = {
  verify: "verify keys",
  manage: "manage keys",
  admin: "administer organizations (members, API access, audit trail)",
};

export interface CallerConfig {
  name: string;
  /**
   * SHA-256 of the bearer token (32 bytes): all the service keeps of a token,
   * whether CALLERS gave the token or only its digest. Absent for a caller
   * that authenticates by certificate only.
   */
  tokenSha256?: Buffer;
  /**
   * The client-certificate identity that is this caller, in the form
   * `CN=<subject common name>`, `DNS:<DNS SAN>` or `URI:<URI SAN>`.
   */
  certIdentity?: string;
  allow: Access[];
  /** Organization ids and `prefix*` patterns; absent = every organization. */
  organizations?: string[];
}

export interface Caller {
  readonly name: string;
  readonly allow: ReadonlySet<Access>;
  /** Built once per caller, handed to every call it makes. */
  readonly context: CallContext;
}

/** The identities the verified client certificate of a call vouches for (empty without one). */
export type PeerIdentities = () => readonly string[];

const NO_PEER: PeerIdentities = () => [];

function caller(name: string, allow: Access[], organizations?: string[]): Caller {
  return {
    name,
    allow: new Set(allow),
    context: { caller: name, organizations: organizations === undefined ? null : new OrganizationScope(organizations) },
  };
}

const ANONYMOUS = caller("anonymous", ["manage", "verify", "admin"]);

export function digest(token: string): Buffer {
  return createHash("sha256").update(token, "utf8").digest();
}

/** Header spellings remembered per process (see CallerAuth.known); callers rarely use more than one each. */
const MAX_KNOWN_HEADERS = 256;

export class CallerAuth {
  private readonly byDigest = new Map<string, { digest: Buffer; caller: Caller }>();
  private readonly byCertIdentity = new Map<string, Caller>();
  /**
   * Authorization headers that have already authenticated, so a known caller's
   * every call does not pay a regex and a SHA-256. Only headers that matched a
   * configured token enter it (so it is bounded by the callers and their few
   * header spellings); a guess never does, and is always checked in constant time.
   */
  private readonly known = new Map<string, Caller>();
  private readonly allowAnonymous: boolean;

  constructor(callers: CallerConfig[], allowUnauthenticated: boolean) {
    for (const c of callers) {
      const entry = caller(c.name, c.allow, c.organizations);
      const d = c.tokenSha256;
      if (d !== undefined) this.byDigest.set(d.toString("latin1"), { digest: d, caller: entry });
      if (c.certIdentity !== undefined) this.byCertIdentity.set(c.certIdentity, entry);
    }
    this.allowAnonymous = allowUnauthenticated && callers.length === 0;
  }

  /**
   * The caller behind a call, allowed `access`: by its bearer token when it
   * sends one (an unknown token is refused even with a valid certificate),
   * otherwise by its client certificate. Throws UNAUTHENTICATED (no or
   * unknown credentials) or PERMISSION_DENIED.
   */
  authorize(authorization: string | undefined, access: Access, peer: PeerIdentities = NO_PEER): Caller {
    if (this.allowAnonymous) return ANONYMOUS;
    const caller = authorization ? this.byToken(authorization) : this.byCertificate(peer());
    if (!caller.allow.has(access)) {
      throw new ApiError(
        Status.PERMISSION_DENIED,
        "CALLER_NOT_ALLOWED",
        `caller "${caller.name}" is not allowed to ${ACCESS_NAMES[access]}`,
        { caller: caller.name, access },
      );
    }
    return caller;
  }

  private byToken(authorization: string): Caller {
    const known = this.known.get(authorization);
    if (known !== undefined) return known;
    const match = /^Bearer\s+(\S+)\s*$/i.exec(authorization);
    if (!match) throw unauthenticated("authorization must be `Bearer <token>`");
    const d = digest(match[1]);
    const found = this.byDigest.get(d.toString("latin1"));
    if (!found || !timingSafeEqual(found.digest, d)) throw unauthenticated("unknown caller token");
    if (this.known.size < MAX_KNOWN_HEADERS) this.known.set(authorization, found.caller);
    return found.caller;
  }

  private byCertificate(identities: readonly string[]): Caller {
    if (identities.length === 0) throw unauthenticated("missing authorization: send `authorization: Bearer <token>`");
    for (const identity of identities) {
      const found = this.byCertIdentity.get(identity);
      if (found) return found;
    }
    // Certificate identities are not secrets, and naming them tells an operator which entry is missing.
    throw unauthenticated(`no caller is configured for the client certificate (${identities.join(", ")})`);
  }
}

function unauthenticated(message: string): ApiError {
  return new ApiError(Status.UNAUTHENTICATED, "CALLER_UNAUTHENTICATED", message);
}
