// gRPC over HTTP/2 with grpc-js, (de)serializing with the protobuf-es schemas.
// Service definitions are derived from the generated descriptors, so adding an
// RPC to the proto and a handler to a binding is all it takes.
import { type DescMessage, type DescService, fromBinary, toBinary } from "@bufbuild/protobuf";
import * as grpc from "@grpc/grpc-js";
import { ApiError, Status, invalidArgument } from "../keys/errors.js";
import { encodingOf } from "../keys/answer.js";
import type { CallerAuth } from "./auth.js";
import type { CallObserver, ServiceBinding } from "./bindings.js";
import { type InternalErrorSink, toGrpcError } from "./errors.js";
import { peerIdentities } from "./tls.js";

/** Marks a request that could not be decoded, so the handler can answer INVALID_ARGUMENT. */
const UNDECODABLE = Symbol("undecodable");
/** Marks a request over its service's message limit (see GrpcServerOptions), answered RESOURCE_EXHAUSTED. */
const TOO_LARGE = Symbol("too large");

function toBuffer(bytes: Uint8Array): Buffer {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

// Encoding is the largest cost of a cached VerifyKey; two ways make it none.
// A cached key's answers carry their own encoding (EncodedVerifyKeyResponse,
// src/keys/answer.ts): sent as they are. Other messages the domain
// reuses are frozen (e.g. NOT_FOUND), so their bytes never change: encoded
// once and remembered here.
const frozenEncodings = new WeakMap<object, Buffer>();

function encoder(schema: DescMessage) {
  return (message: unknown): Buffer => {
    const m = message as object;
    const prebuilt = encodingOf(m);
    if (prebuilt !== undefined) return prebuilt;
    if (!Object.isFrozen(m)) return toBuffer(toBinary(schema, m as never));
    let bytes = frozenEncodings.get(m);
    if (bytes === undefined) {
      bytes = toBuffer(toBinary(schema, m as never));
      frozenEncodings.set(m, bytes);
    }
    return bytes;
  };
}

function decoder(schema: DescMessage, maxBytes: number) {
  return (bytes: Buffer): unknown => {
    if (bytes.length > maxBytes) return TOO_LARGE;
    try {
      return fromBinary(schema, bytes);
    } catch {
      return UNDECODABLE;
    }
  };
}

export interface GrpcServerOptions {
  maxMessageBytes: number;
  /**
   * The largest message a binding with its own limit (ext_authz: a request's
   * headers, which Envoy may pass up to its max_request_headers_kb) may send;
   * the server reads up to this, and every other binding refuses what is over
   * maxMessageBytes itself.
   */
  largestMessageBytes?: number;
}

/** The message limit of bindings without their own, by server (set by createGrpcServer). */
const messageLimits = new WeakMap<grpc.Server, number>();

export function createGrpcServer(options: GrpcServerOptions): grpc.Server {
  const server = new grpc.Server({
    "grpc.max_receive_message_length": Math.max(options.maxMessageBytes, options.largestMessageBytes ?? 0),
    "grpc.max_send_message_length": 4 * 1024 * 1024,
    // Callers keep long-lived connections; reap dead ones.
    "grpc.keepalive_time_ms": 60_000,
    "grpc.keepalive_timeout_ms": 20_000,
    "grpc.keepalive_permit_without_calls": 1,
    // Channelz keeps per-call statistics for a debugging service we do not
    // expose; it showed in the hot path's profile (about 8% inclusive).
    "grpc.enable_channelz": 0,
  });
  messageLimits.set(server, options.maxMessageBytes);
  return server;
}

/** The grpc-js service definition of a protobuf-es service: paths and (de)serializers. */
export function serviceDefinition(service: DescService, maxMessageBytes = Number.POSITIVE_INFINITY): Record<string, grpc.MethodDefinition<unknown, unknown>> {
  const definition: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
  for (const method of service.methods) {
    definition[method.localName] = {
      path: `/${service.typeName}/${method.name}`,
      requestStream: false,
      responseStream: false,
      originalName: method.localName,
      requestSerialize: encoder(method.input),
      requestDeserialize: decoder(method.input, maxMessageBytes),
      responseSerialize: encoder(method.output),
      responseDeserialize: (b: Buffer) => fromBinary(method.output, b),
    };
  }
  return definition;
}

export function addBinding(
  server: grpc.Server,
  binding: ServiceBinding,
  auth: CallerAuth,
  onInternal: InternalErrorSink,
  observer: CallObserver,
): void {
  const definition = serviceDefinition(binding.service, binding.maxMessageBytes ?? messageLimits.get(server) ?? Number.POSITIVE_INFINITY);
  const implementation: grpc.UntypedServiceImplementation = {};
  for (const method of binding.service.methods) {
    const path = definition[method.localName].path;
    const handler = binding.handlers[method.localName] as (req: unknown, call: unknown) => unknown;
    const access = binding.access(method.localName);
    implementation[method.localName] = (call: grpc.ServerUnaryCall<unknown, unknown>, callback: grpc.sendUnaryData<unknown>) => {
      const startedAt = performance.now();
      let callerName = "";
      const fail = (err: unknown) => {
        const status = toGrpcError(err, path, onInternal);
        observer.finished(path, status.code as number, startedAt, callerName, "grpc", call.metadata);
        callback(status);
      };
      let result: unknown;
      try {
        // Authentication first: an unknown caller learns nothing, not even whether its request was well-formed.
        const header = call.metadata.get("authorization");
        const caller = auth.authorize(header.length > 0 ? String(header[0]) : undefined, access, () => peerIdentities(call));
        callerName = caller.name;
        const request = call.request;
        if (request === UNDECODABLE || request === TOO_LARGE) {
          result = unreadable(binding, request);
        } else {
          // A call the client gave up on, or whose deadline passed while it waited (a late event loop), must not start writing.
          if (call.cancelled) throw notStarted(Status.CANCELLED, "the client cancelled the call");
          if (Number(call.getDeadline()) <= Date.now()) throw notStarted(Status.DEADLINE_EXCEEDED, "the call's deadline passed");
          result = handler(request, caller.context);
        }
      } catch (err) {
        fail(err);
        return;
      }
      if (result instanceof Promise) {
        result.then((res) => {
          observer.finished(path, 0, startedAt, callerName, "grpc", call.metadata);
          callback(null, res);
        }, fail);
      } else {
        observer.finished(path, 0, startedAt, callerName, "grpc", call.metadata);
        callback(null, result);
      }
    };
  }
  server.addService(definition, implementation);
}

/** What a request that could not be read gets: the binding's own answer (ext_authz: a denial), or an error. */
function unreadable(binding: ServiceBinding, request: typeof UNDECODABLE | typeof TOO_LARGE): unknown {
  if (binding.unreadable !== undefined) return binding.unreadable();
  if (request === TOO_LARGE) {
    throw new ApiError(Status.RESOURCE_EXHAUSTED, "MESSAGE_TOO_LARGE", "the request is larger than the server accepts (MAX_MESSAGE_BYTES)");
  }
  throw invalidArgument("request", "is not a valid protobuf message");
}

function notStarted(code: typeof Status.CANCELLED | typeof Status.DEADLINE_EXCEEDED, why: string): ApiError {
  return new ApiError(code, code === Status.CANCELLED ? "CANCELLED" : "DEADLINE_EXCEEDED", `${why} before it started; nothing was done`);
}

/** Binds and starts listening; resolves with the bound port (useful with port 0). */
export function listenGrpc(server: grpc.Server, host: string, port: number, credentials = grpc.ServerCredentials.createInsecure()): Promise<number> {
  return new Promise((resolve, reject) => {
    server.bindAsync(`${host.includes(":") ? `[${host}]` : host}:${port}`, credentials, (err, bound) => (err ? reject(err) : resolve(bound)));
  });
}
