// Services as plain handler tables, independent of the transport: the gRPC
// server (grpc-server.ts) and the Connect router (http-server.ts) both
// serve exactly these functions. Each method also names the access a caller
// needs (verify, manage or admin), and every call naming an organization is
// checked against the caller's organizations here, once for both ports.
import type { DescMessage, MessageShape } from "@bufbuild/protobuf";
import type { GenService, GenServiceMethods } from "@bufbuild/protobuf/codegenv2";
import { create } from "@bufbuild/protobuf";
import {
  ApiKeyService,
  OrganizationService as OrganizationServiceDesc,
  type VerifyKeyRequest,
  VerifyKeyRequestSchema,
  type VerifyKeyResponse,
  type VerifyKeyStreamResponse,
} from "../../gen/apikeys/v1/apikeys_pb.js";
import { type CallContext, requireOrganization } from "../keys/call-context.js";
import type { KeyService } from "../keys/key-service.js";
import type { OrganizationService } from "../keys/organization-service.js";
import type { Verifier } from "../keys/verifier.js";
import type { Access } from "./auth.js";

/**
 * A unary method's handler, and also a bidirectional streaming method's where
 * each request gets one answer (VerifyKeyStream): called once per streamed
 * request; the transport does the stream (back-pressure, correlation of
 * failures, cancellation). See grpc-server.ts and http-server.ts.
 */
export type Handler<I extends DescMessage, O extends DescMessage> = (
  req: MessageShape<I>,
  call: CallContext,
) => MessageShape<O> | Promise<MessageShape<O>>;

export type Handlers<S extends GenServiceMethods> = { [M in keyof S]: Handler<S[M]["input"], S[M]["output"]> };

/**
 * Told about every finished call on either port, for metrics and logs. It
 * runs on the hot path: implementations must be cheap and must not throw.
 */
export interface CallObserver {
  /**
   * `code` is the gRPC status code (0 = OK); `startedAt` is a performance.now() reading;
   * `headers` are the call's request headers, passed as the transport has them so
   * that reading one (e.g. x-request-id) costs nothing unless the observer needs it.
   */
  finished(path: string, code: number, startedAt: number, caller: string, protocol: "grpc" | "connect", headers: RequestHeaders): void;
}

/**
 * Request headers as either transport has them: grpc-js Metadata (get returns
 * a list of values) or Fetch API Headers (get returns a string or null).
 */
export interface RequestHeaders {
  get(name: string): unknown;
}

export const NO_OBSERVER: CallObserver = { finished() {} };

export interface ServiceBinding<S extends GenServiceMethods = GenServiceMethods> {
  service: GenService<S>;
  handlers: Handlers<S>;
  /** The access a caller needs, by method local name (e.g. "verifyKey"). */
  access: (method: string) => Access;
  /** The largest request this service reads, when it differs from MAX_MESSAGE_BYTES (gRPC port). */
  maxMessageBytes?: number;
  /**
   * The answer to a request that cannot be decoded or is over the limit,
   * instead of an error (gRPC port): for a service whose caller treats an
   * error differently from a refusal (Envoy's failure_mode_allow).
   */
  unreadable?: () => unknown;
}

/** The handler, called only when the caller may act in the request's organization. */
function inOrganization<R extends { organizationId: string }, O>(handler: (req: R, call: CallContext) => O): (req: R, call: CallContext) => O {
  return (req, call) => {
    requireOrganization(call, req.organizationId);
    return handler(req, call);
  };
}

/** A streamed request without its VerifyKeyRequest: refused by the verifier as an empty key. */
const NO_REQUEST: VerifyKeyRequest = Object.freeze(create(VerifyKeyRequestSchema));

/** VerifyKey's answer as a VerifyKeyStream answer (a plain message: no copy, no per-field work). */
function streamed(correlationId: number, response: VerifyKeyResponse): VerifyKeyStreamResponse {
  return { $typeName: "apikeys.v1.VerifyKeyStreamResponse", correlationId, result: { case: "response", value: response } };
}

export function apiKeyBinding(keys: KeyService, verifier: Verifier): ServiceBinding<(typeof ApiKeyService)["method"]> {
  // A caller limited to some organizations is told NOT_FOUND for another's key (see Verifier.verify).
  const verifyKey: Handler<typeof VerifyKeyRequestSchema, typeof ApiKeyService.method.verifyKey.output> = (req, call) =>
    verifier.verify(req, call.organizations, call.caller);
  return {
    service: ApiKeyService,
    handlers: {
      createKey: inOrganization((req, call) => keys.createKey(req, call)),
      listKeys: inOrganization((req, call) => keys.listKeys(req, call)),
      getKey: inOrganization((req, call) => keys.getKey(req, call)),
      updateKey: inOrganization((req, call) => keys.updateKey(req, call)),
      rotateKey: inOrganization((req, call) => keys.rotateKey(req, call)),
      revokeKey: inOrganization((req, call) => keys.revokeKey(req, call)),
      revokeKeys: inOrganization((req, call) => keys.revokeKeys(req, call)),
      verifyKey,
      // Each streamed verification is exactly a VerifyKey call: same handler, same caller context.
      verifyKeyStream: (req, call) => {
        const id = req.correlationId;
        const answer = verifyKey(req.request ?? NO_REQUEST, call);
        return answer instanceof Promise ? answer.then((a) => streamed(id, a)) : streamed(id, answer);
      },
    },
    access: (method) => (method === "verifyKey" || method === "verifyKeyStream" ? "verify" : "manage"),
  };
}

export function organizationBinding(orgs: OrganizationService): ServiceBinding<(typeof OrganizationServiceDesc)["method"]> {
  return {
    service: OrganizationServiceDesc,
    handlers: {
      setMemberRole: inOrganization((req, call) => orgs.setMemberRole(req, call)),
      removeMember: inOrganization((req, call) => orgs.removeMember(req, call)),
      setApiAccess: inOrganization((req, call) => orgs.setApiAccess(req, call)),
      listAuditEvents: inOrganization((req, call) => orgs.listAuditEvents(req, call)),
    },
    // Members' roles decide what every key of the organization may do: more than managing keys.
    access: () => "admin",
  };
}
