// Services as plain handler tables, independent of the transport: the gRPC
// server (grpc-server.ts) and the Connect router (http-server.ts) both
// serve exactly these functions. Each method also names the access a caller
// needs (manage or verify).
import type { DescMessage, MessageShape } from "@bufbuild/protobuf";
import type { GenService, GenServiceMethods } from "@bufbuild/protobuf/codegenv2";
import { ApiKeyService, OrganizationService as OrganizationServiceDesc } from "../../gen/apikeys/v1/apikeys_pb.js";
import type { CallContext } from "../keys/call-context.js";
import type { KeyService } from "../keys/key-service.js";
import type { OrganizationService } from "../keys/organization-service.js";
import type { Verifier } from "../keys/verifier.js";
import type { Access } from "./auth.js";

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
}

export function apiKeyBinding(keys: KeyService, verifier: Verifier): ServiceBinding<(typeof ApiKeyService)["method"]> {
  return {
    service: ApiKeyService,
    handlers: {
      createKey: (req, call) => keys.createKey(req, call),
      listKeys: (req, call) => keys.listKeys(req, call),
      getKey: (req, call) => keys.getKey(req, call),
      updateKey: (req, call) => keys.updateKey(req, call),
      rotateKey: (req, call) => keys.rotateKey(req, call),
      revokeKey: (req, call) => keys.revokeKey(req, call),
      revokeKeys: (req, call) => keys.revokeKeys(req, call),
      verifyKey: (req) => verifier.verify(req),
    },
    access: (method) => (method === "verifyKey" ? "verify" : "manage"),
  };
}

export function organizationBinding(orgs: OrganizationService): ServiceBinding<(typeof OrganizationServiceDesc)["method"]> {
  return {
    service: OrganizationServiceDesc,
    handlers: {
      setMemberRole: (req, call) => orgs.setMemberRole(req, call),
      removeMember: (req, call) => orgs.removeMember(req, call),
      setApiAccess: (req, call) => orgs.setApiAccess(req, call),
      listAuditEvents: (req, call) => orgs.listAuditEvents(req, call),
    },
    access: () => "manage",
  };
}
