// Envoy external authorization (envoy.service.auth.v3.Authorization/Check) on
// the gRPC port. Envoy, or an Istio sidecar, asks before it forwards each
// request: we find the API key in the request, verify it with the same
// Verifier as VerifyKey, and answer "allow" (telling the upstream who is
// calling) or "deny" (with the HTTP response the client gets). Envoy itself
// is a service caller that needs "verify" access, like any gateway.
import { type MessageInitShape, create } from "@bufbuild/protobuf";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { type VerifyKeyResponse, VerifyCode, VerifyKeyRequestSchema } from "../../gen/apikeys/v1/apikeys_pb.js";
import type { HeaderValueOptionSchema } from "../../gen/envoy/config/core/v3/base_pb.js";
import type { AttributeContext_HttpRequest } from "../../gen/envoy/service/auth/v3/attribute_context_pb.js";
import { Authorization, type CheckRequest, type CheckResponse, CheckResponseSchema } from "../../gen/envoy/service/auth/v3/external_auth_pb.js";
import { StatusCode as HttpCode } from "../../gen/envoy/type/v3/http_status_pb.js";
import type { OrganizationScope } from "../keys/call-context.js";
import { ApiError, Status, invalidArgument } from "../keys/errors.js";
import { roleName } from "../keys/policy.js";
import { LIMITS } from "../keys/validation.js";
import type { Verifier } from "../keys/verifier.js";
import type { ServiceBinding } from "../transport/bindings.js";

/**
 * What the upstream learns about an allowed request. Every one is set or
 * removed on each allowed request, so a client cannot smuggle its own.
 */
const IDENTITY_HEADERS = {
  id: "x-apikey-id",
  organization: "x-apikey-organization",
  project: "x-apikey-project",
  user: "x-apikey-user",
  role: "x-apikey-role",
  /** Comma-separated; "*" when the key has no scopes (full access of its user). */
  scopes: "x-apikey-scopes",
} as const;

/** Where a client may put its key, in the order we look. */
const API_KEY_HEADER = "x-api-key";
const QUERY_PARAMETERS = ["token", "api_key"];

/**
 * Route settings an Envoy configuration can pass in
 * check_settings.context_extensions. Scopes are decided by the route, not the
 * client: a client-sent header could simply leave a scope out.
 */
const CONTEXT_EXTENSIONS = { requiredScopes: "required_scopes", cost: "cost" } as const;

type Denial =
  | "MISSING_KEY"
  | "NOT_FOUND"
  | "REVOKED"
  | "EXPIRED"
  | "INSUFFICIENT_SCOPE"
  | "DISABLED"
  | "RATE_LIMITED"
  | "USAGE_EXCEEDED"
  | "UNAVAILABLE"
  | "BAD_REQUEST"
  | "CHECK_FAILED";

/** Every way a request is denied: the client's HTTP status, the status Envoy sees, and what the client is told. */
const DENIALS: Record<Denial, { http: HttpCode; status: number; message: string }> = {
  MISSING_KEY: { http: HttpCode.Unauthorized, status: Status.UNAUTHENTICATED, message: "an API key is required: send `Authorization: Bearer <key>` or `X-API-Key: <key>`" },
  NOT_FOUND: { http: HttpCode.Unauthorized, status: Status.UNAUTHENTICATED, message: "the API key is not valid" },
  REVOKED: { http: HttpCode.Unauthorized, status: Status.UNAUTHENTICATED, message: "the API key has been revoked" },
  EXPIRED: { http: HttpCode.Unauthorized, status: Status.UNAUTHENTICATED, message: "the API key has expired" },
  INSUFFICIENT_SCOPE: { http: HttpCode.Forbidden, status: Status.PERMISSION_DENIED, message: "the API key lacks a scope this request needs" },
  DISABLED: { http: HttpCode.Forbidden, status: Status.PERMISSION_DENIED, message: "API access is switched off for this key's organization or user" },
  RATE_LIMITED: { http: HttpCode.TooManyRequests, status: Status.RESOURCE_EXHAUSTED, message: "the API key's rate limit is exhausted" },
  USAGE_EXCEEDED: { http: HttpCode.TooManyRequests, status: Status.RESOURCE_EXHAUSTED, message: "the API key's monthly credits are used up" },
  UNAVAILABLE: { http: HttpCode.ServiceUnavailable, status: Status.UNAVAILABLE, message: "the key cannot be checked right now; retry later" },
  // Fixed texts: what was wrong with the request is not echoed back (it may carry anything, even a key).
  BAD_REQUEST: { http: HttpCode.BadRequest, status: Status.INVALID_ARGUMENT, message: "the request cannot be checked as sent (too many or too long scopes, or a bad route setting)" },
  CHECK_FAILED: { http: HttpCode.InternalServerError, status: Status.INTERNAL, message: "the request could not be checked" },
};

interface Credential {
  key: string;
  /** Where it was found, so that it can be stripped before the request goes upstream. */
  header?: string;
  queryParameter?: string;
}

export interface ExtAuthzOptions {
  verifier: Verifier;
  /** Told about an unexpected failure (a bug), which denies the request. */
  onInternal?: (err: unknown) => void;
  /** A request header naming required scopes (see Config.extAuthzScopesHeader); "" = none. */
  scopesHeader: string;
  now?: () => number;
}

export class ExtAuthz {
  private readonly verifier: Verifier;
  private readonly scopesHeader: string;
  private readonly onInternal: (err: unknown) => void;
  private readonly now: () => number;

  constructor(options: ExtAuthzOptions) {
    this.verifier = options.verifier;
    this.onInternal = options.onInternal ?? (() => {});
    this.scopesHeader = options.scopesHeader;
    this.now = options.now ?? Date.now;
  }

  /**
   * Answers synchronously when the Verifier does (a cached key), like VerifyKey.
   * Never fails: every input, however malformed, and every failure is a
   * denial. A gRPC error would be worse than a wrong status code: Envoy
   * configured with failure_mode_allow lets the request through on one.
   */
  check(req: CheckRequest, organizations: OrganizationScope | null = null, caller = ""): CheckResponse | Promise<CheckResponse> {
    let answer: VerifyKeyResponse | Promise<VerifyKeyResponse>;
    let credential: Credential | null;
    try {
      const attributes = req.attributes;
      const http = attributes?.request?.http;
      const headers = http ? headersOf(http) : {};
      credential = findCredential(headers, http?.path ?? "");
      if (credential === null) return deny("MISSING_KEY");
      const extensions = attributes?.contextExtensions ?? {};
      const verifyRequest = create(VerifyKeyRequestSchema, {
        key: credential.key,
        requiredScopes: this.requiredScopes(extensions, headers),
        cost: parseCost(extensions[CONTEXT_EXTENSIONS.cost]),
      });
      answer = this.verifier.verify(verifyRequest, organizations, caller);
    } catch (err) {
      return this.failed(err);
    }
    const found = credential;
    if (answer instanceof Promise) return answer.then((res) => this.decide(res, found)).catch((err: unknown) => this.failed(err));
    try {
      return this.decide(answer, found);
    } catch (err) {
      return this.failed(err);
    }
  }

  private requiredScopes(extensions: Record<string, string>, headers: Record<string, string>): string[] {
    const scopes = splitList(extensions[CONTEXT_EXTENSIONS.requiredScopes]);
    if (this.scopesHeader !== "") for (const scope of splitList(header(headers, this.scopesHeader))) scopes.push(scope);
    return scopes;
  }

  private decide(res: VerifyKeyResponse, credential: Credential): CheckResponse {
    if (res.valid) return allow(res, credential);
    const denial = VerifyCode[res.code] as Denial;
    if (!Object.hasOwn(DENIALS, denial)) throw new Error(`ext_authz: no denial for verify code ${res.code}`);
    return deny(denial, this.retryAfter(res, denial));
  }

  private retryAfter(res: VerifyKeyResponse, denial: Denial): [string, string][] {
    const now = this.now();
    if (denial === "RATE_LIMITED" && res.rateLimit?.resetTime) return [["retry-after", secondsUntil(timestampMs(res.rateLimit.resetTime), now)]];
    if (denial === "USAGE_EXCEEDED") return [["retry-after", secondsUntil(nextMonthUtc(now), now)]];
    return [];
  }

  /**
   * A key too long to be one is simply not valid. Any other request the
   * Verifier refuses (too many or too long scopes, whether from the route or
   * the client's scopes header; a cost that is not a number) is a 400. A
   * dependency failure denies with 503; it is reported where it happens
   * (health checking, the Redis clients), not once per request here. Anything
   * else is a bug: reported, and a denial all the same.
   */
  private failed(err: unknown): CheckResponse {
    if (err instanceof ApiError && err.code === Status.INVALID_ARGUMENT) return deny(err.metadata.field === "key" ? "NOT_FOUND" : "BAD_REQUEST");
    if (err instanceof ApiError && err.code === Status.UNAVAILABLE) return deny("UNAVAILABLE");
    try {
      this.onInternal(err);
    } catch {
      // A failing report must not turn the denial into an error.
    }
    return deny("CHECK_FAILED");
  }
}

export function extAuthzBinding(extAuthz: ExtAuthz, maxMessageBytes: number): ServiceBinding<(typeof Authorization)["method"]> {
  return {
    service: Authorization,
    // Envoy passes a request's headers as they came (up to its max_request_headers_kb, and not necessarily
    // valid UTF-8): a CheckRequest too large or undecodable must be a denial, not an error.
    maxMessageBytes,
    unreadable: () => deny("BAD_REQUEST"),
    // An Envoy caller limited to some organizations denies another's keys as unknown (see Verifier.verify).
    handlers: { check: (req, call) => extAuthz.check(req, call.organizations, call.caller) },
    access: () => "verify",
  };
}

/**
 * Request headers by lower-case name. Envoy sends either a map (repeated
 * headers joined by ",") or, with encode_raw_headers, a list; the list is
 * folded into the same shape so that both configurations behave alike.
 */
function headersOf(http: AttributeContext_HttpRequest): Record<string, string> {
  const raw = http.headerMap?.headers;
  if (raw === undefined || raw.length === 0) return http.headers;
  const folded = new Map<string, string>();
  for (const h of raw) {
    const name = h.key.toLowerCase();
    const value = h.rawValue.length > 0 ? Buffer.from(h.rawValue).toString("utf8") : h.value;
    const seen = folded.get(name);
    folded.set(name, seen === undefined ? value : `${seen},${value}`);
  }
  return Object.fromEntries(folded);
}

/** Own properties only: a header name such as "constructor" must not find Object's. */
function header(headers: Record<string, string>, name: string): string | undefined {
  return Object.hasOwn(headers, name) ? headers[name] : undefined;
}

/** The key from `Authorization: Bearer`, `X-API-Key`, or the token / api_key query parameter, in that order. */
function findCredential(headers: Record<string, string>, path: string): Credential | null {
  const bearer = /^Bearer\s+(\S+)\s*$/i.exec(header(headers, "authorization") ?? "");
  if (bearer) return { key: bearer[1], header: "authorization" };
  const apiKey = header(headers, API_KEY_HEADER)?.trim();
  if (apiKey) return { key: apiKey, header: API_KEY_HEADER };
  const q = path.indexOf("?");
  if (q === -1) return null;
  const params = new URLSearchParams(path.slice(q + 1));
  for (const name of QUERY_PARAMETERS) {
    const value = params.get(name);
    if (value) return { key: value, queryParameter: name };
  }
  return null;
}

function allow(res: VerifyKeyResponse, credential: Credential): CheckResponse {
  const principal = res.principal;
  const set: MessageInitShape<typeof HeaderValueOptionSchema>[] = [];
  const remove: string[] = [];
  const put = (name: string, value: string) => {
    // append=false replaces whatever the client sent under that name.
    if (value === "") remove.push(name);
    else set.push({ header: { key: name, value }, append: false });
  };
  put(IDENTITY_HEADERS.id, res.key?.id ?? "");
  put(IDENTITY_HEADERS.organization, principal?.organizationId ?? "");
  put(IDENTITY_HEADERS.project, principal?.projectId ?? "");
  put(IDENTITY_HEADERS.user, principal?.userId ?? "");
  put(IDENTITY_HEADERS.role, principal ? roleName(principal.role) : "");
  put(IDENTITY_HEADERS.scopes, principal && principal.scopes.length > 0 ? principal.scopes.join(",") : "*");
  // The upstream never sees the key.
  if (credential.header) remove.push(credential.header);
  return create(CheckResponseSchema, {
    status: { code: 0 },
    httpResponse: {
      case: "okResponse",
      value: { headers: set, headersToRemove: remove, queryParametersToRemove: credential.queryParameter ? [credential.queryParameter] : [] },
    },
  });
}

function deny(denial: Denial, extraHeaders: [string, string][] = []): CheckResponse {
  const { http, status, message } = DENIALS[denial];
  const headers: [string, string][] = [["content-type", "application/json"], ...extraHeaders];
  // A 401 names the scheme the client should use (RFC 9110, section 15.5.2).
  if (http === HttpCode.Unauthorized) headers.push(["www-authenticate", "Bearer"]);
  return create(CheckResponseSchema, {
    status: { code: status, message },
    httpResponse: {
      case: "deniedResponse",
      value: {
        status: { code: http },
        headers: headers.map(([key, value]) => ({ header: { key, value }, append: false })),
        body: JSON.stringify({ error: denial, message }),
      },
    },
  });
}

/** At most one more than the Verifier takes, so a header of a million commas costs no million-entry list. */
function splitList(value: string | undefined): string[] {
  return value ? value.split(/[\s,]+/, LIMITS.scopes + 2).filter((s) => s !== "").slice(0, LIMITS.scopes + 1) : [];
}

function parseCost(value: string | undefined): number {
  if (value === undefined || value === "") return 0;
  const n = /^[0-9]{1,10}$/.test(value) ? Number(value) : Number.NaN;
  if (!(n <= 0xffff_ffff)) {
    throw invalidArgument(`context_extensions.${CONTEXT_EXTENSIONS.cost}`, `must be a whole number of credits, got "${value}"`);
  }
  return n;
}

function secondsUntil(time: number, now: number): string {
  return String(Math.max(1, Math.ceil((time - now) / 1000)));
}

/** Credits refill at the start of each calendar month (UTC). */
function nextMonthUtc(now: number): number {
  const d = new Date(now);
  return Date.UTC(d.getUTCFullYear(), d.getUTCMonth() + 1, 1);
}
