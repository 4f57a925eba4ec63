// The one call pipeline of both ports. Every call, gRPC (grpc-server.ts) or
// Connect (http-server.ts), goes through the same steps in the same order:
//   1. the caller is authenticated and its access checked (auth.ts) — first,
//      so an unknown caller learns nothing, not even whether its request was
//      well-formed;
//   2. a request the transport could not read gets the binding's own answer,
//      or INVALID_ARGUMENT / RESOURCE_EXHAUSTED;
//   3. a call the client gave up on, or whose deadline passed while it waited
//      (a late event loop, not only the transport's own timer), is not
//      started: CANCELLED / DEADLINE_EXCEEDED, nothing done;
//   4. the handler runs with the caller's context;
//   5. an error becomes the port's wire error (errors.ts), and the observer
//      (metrics, the log line) is told how the call ended.
// A transport only says how to read these facts from its calls (CallAccess)
// and delivers the answer. A call that has started is not interrupted: each
// change is one transaction, so a call that overruns its deadline has
// happened completely or not at all.
import type { DescMethod } from "@bufbuild/protobuf";
import { ApiError, Status, invalidArgument } from "../keys/errors.js";
import type { Caller, CallerAuth } from "./auth.js";
import type { CallObserver, RequestHeaders, ServiceBinding } from "./bindings.js";
import type { InternalErrorSink } from "./errors.js";

/** A request that could not be decoded (step 2). */
export const UNDECODABLE = Symbol("undecodable");
/** A request over its service's message limit (step 2). */
export const TOO_LARGE = Symbol("too large");

/** How a transport's calls answer the pipeline's questions, and how its errors look. `C` is its call, `E` its wire error. */
export interface CallAccess<C, E> {
  readonly protocol: "grpc" | "connect";
  /** The authorization header as sent, if any. */
  authorization(call: C): string | undefined;
  /** The identities of the call's verified client certificate; none without mutual TLS. */
  peer(call: C): readonly string[];
  cancelled(call: C): boolean;
  /** Whether the call's deadline has passed; a call without one never expires. */
  expired(call: C): boolean;
  headers(call: C): RequestHeaders;
  toError(err: unknown, path: string, onInternal: InternalErrorSink): E;
  /** The gRPC status code of a wire error. */
  code(error: E): number;
}

/** How a transport takes the outcome: an error, or null and the answer. */
export type Reply<E> = (error: E | null, answer?: unknown) => void;

/** One method, served: runs a call through the steps above and replies once. */
export type Invoke<C, E> = (call: C, request: unknown, reply: Reply<E>) => void;

export interface PipelineOptions {
  auth: CallerAuth;
  onInternal: InternalErrorSink;
  observer: CallObserver;
}

/** The path both ports and the observer name a method by, e.g. "/apikeys.v1.ApiKeyService/VerifyKey". */
export function methodPath(binding: ServiceBinding, method: DescMethod): string {
  return `/${binding.service.typeName}/${method.name}`;
}

export function invoker<C, E>(transport: CallAccess<C, E>, binding: ServiceBinding, method: DescMethod, options: PipelineOptions): Invoke<C, E> {
  const { auth, onInternal, observer } = options;
  const path = methodPath(binding, method);
  const handler = binding.handlers[method.localName] as (req: unknown, call: unknown) => unknown;
  const access = binding.access(method.localName);
  const protocol = transport.protocol;

  const succeed = (call: C, answer: unknown, startedAt: number, callerName: string, reply: Reply<E>): void => {
    observer.finished(path, 0, startedAt, callerName, protocol, transport.headers(call));
    reply(null, answer);
  };
  const fail = (call: C, err: unknown, startedAt: number, callerName: string, reply: Reply<E>): void => {
    const error = transport.toError(err, path, onInternal);
    observer.finished(path, transport.code(error), startedAt, callerName, protocol, transport.headers(call));
    reply(error);
  };

  return (call, request, reply) => {
    const startedAt = performance.now();
    let callerName = "";
    let result: unknown;
    try {
      const caller = auth.authorize(transport.authorization(call), access, () => transport.peer(call));
      callerName = caller.name;
      if (request === UNDECODABLE || request === TOO_LARGE) {
        result = unreadable(binding, request);
      } else {
        if (transport.cancelled(call)) throw notStarted(Status.CANCELLED, "the client cancelled the call");
        if (transport.expired(call)) throw notStarted(Status.DEADLINE_EXCEEDED, "the call's deadline passed");
        result = handler(request, caller.context);
      }
    } catch (err) {
      fail(call, err, startedAt, callerName, reply);
      return;
    }
    // A cached VerifyKey answers synchronously: no promise, no await on the hot path.
    if (result instanceof Promise) {
      result.then(
        (answer) => succeed(call, answer, startedAt, callerName, reply),
        (err) => fail(call, err, startedAt, callerName, reply),
      );
    } else {
      succeed(call, result, startedAt, callerName, reply);
    }
  };
}

/** What a request that could not be read gets: the binding's own answer (ext_authz: a denial), or an error. */
function unreadable(binding: ServiceBinding, request: typeof UNDECODABLE | typeof TOO_LARGE): unknown {
  if (binding.unreadable !== undefined) return binding.unreadable();
  throw unreadableError(request);
}

/** The error for a request that could not be read: RESOURCE_EXHAUSTED over the limit, else INVALID_ARGUMENT. */
export function unreadableError(request: typeof UNDECODABLE | typeof TOO_LARGE): ApiError {
  if (request === TOO_LARGE) {
    return new ApiError(Status.RESOURCE_EXHAUSTED, "MESSAGE_TOO_LARGE", "the request is larger than the server accepts (MAX_MESSAGE_BYTES)");
  }
  return invalidArgument("request", "is not a valid protobuf message");
}

/**
 * Opens a stream (VerifyKeyStream): step 1 once, for every message on it —
 * the caller authenticated with the method's access. Returns the caller, or
 * null when refused: the observer has been told and `refuse` got the port's
 * error. The stream's messages then go to the handler with the caller's context.
 */
export function streamOpener<C, E>(
  transport: CallAccess<C, E>,
  binding: ServiceBinding,
  method: DescMethod,
  options: PipelineOptions,
): (call: C, refuse: (error: E) => void) => Caller | null {
  const { auth, onInternal, observer } = options;
  const path = methodPath(binding, method);
  const access = binding.access(method.localName);
  return (call, refuse) => {
    const startedAt = performance.now();
    try {
      return auth.authorize(transport.authorization(call), access, () => transport.peer(call));
    } catch (err) {
      const error = transport.toError(err, path, onInternal);
      observer.finished(path, transport.code(error), startedAt, "", transport.protocol, transport.headers(call));
      refuse(error);
      return null;
    }
  };
}

function notStarted(code: typeof Status.CANCELLED | typeof Status.DEADLINE_EXCEEDED, why: string): ApiError {
  return new ApiError(code, code === Status.CANCELLED ? "CANCELLED" : "DEADLINE_EXCEEDED", `${why} before it started; nothing was done`);
}
