// gRPC over HTTP/2 with grpc-js, (de)serializing with the protobuf-es schemas.
// Service definitions are derived from the generated descriptors, so adding an
// RPC to the proto and a handler to a binding is all it takes. Every call goes
// through the call pipeline both ports share (pipeline.ts); this file only
// reads grpc-js calls and sends their answers. Why grpc-js and not
// connect-node's HTTP/2 server for this port: docs/architecture.md.
import { type DescMessage, type DescMethod, type DescService, fromBinary, toBinary } from "@bufbuild/protobuf";
import * as grpc from "@grpc/grpc-js";
import { type VerifyKeyStreamResponse, VerifyKeyStreamResponseSchema } from "../../gen/apikeys/v1/apikeys_pb.js";
import { encodingOf } from "../keys/answer.js";
import type { CallerAuth } from "./auth.js";
import type { CallObserver, ServiceBinding } from "./bindings.js";
import { type InternalErrorSink, toGrpcError, toStatusMessage } from "./errors.js";
import { type CallAccess, type PipelineOptions, TOO_LARGE, UNDECODABLE, invoker, methodPath, streamOpener, unreadableError } from "./pipeline.js";
import { peerIdentities } from "./tls.js";

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

function varintLength(n: number): number {
  let length = 1;
  while (n >= 0x80) {
    n >>>= 7;
    length++;
  }
  return length;
}

function writeVarint(out: Buffer, at: number, n: number): number {
  while (n >= 0x80) {
    out[at++] = (n & 0x7f) | 0x80;
    n >>>= 7;
  }
  out[at++] = n;
  return at;
}

/**
 * A VerifyKeyStream answer: its correlation id and VerifyKey's answer bytes as
 * they are (a cached key's, see ENCODING), framed by hand: field 1 (varint,
 * omitted when 0, as protobuf does) and field 2 (length-delimited). The same
 * bytes toBinary gives, without encoding the answer again per message.
 */
function streamAnswerEncoder(answerEncoder: (message: unknown) => Buffer, schema: DescMessage) {
  return (message: unknown): Buffer => {
    const m = message as VerifyKeyStreamResponse;
    if (m.result.case !== "response") return toBuffer(toBinary(schema, m as never));
    const body = answerEncoder(m.result.value);
    const id = m.correlationId >>> 0;
    const idBytes = id === 0 ? 0 : 1 + varintLength(id);
    const out = Buffer.allocUnsafe(idBytes + 1 + varintLength(body.length) + body.length);
    let at = 0;
    if (id !== 0) {
      out[at++] = 0x08;
      at = writeVarint(out, at, id);
    }
    out[at++] = 0x12;
    at = writeVarint(out, at, body.length);
    body.copy(out, at);
    return out;
  };
}

function responseEncoder(schema: DescMessage): (message: unknown) => Buffer {
  if (schema.typeName === VerifyKeyStreamResponseSchema.typeName) {
    const answer = VerifyKeyStreamResponseSchema.field.response.message!;
    return streamAnswerEncoder(encoder(answer), schema);
  }
  return encoder(schema);
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
  /** Concurrent streams one connection may have open (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS); default 100. */
  maxConcurrentStreams?: number;
  /** A connection without calls for this long is closed (GOAWAY); default 5 minutes. */
  maxConnectionIdleMs?: number;
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
    // One connection cannot hold more streams than this at once (beyond it, the client queues or is refused
    // by HTTP/2 itself), nor an idle connection its socket for ever.
    "grpc.max_concurrent_streams": options.maxConcurrentStreams ?? 100,
    "grpc.max_connection_idle_ms": options.maxConnectionIdleMs ?? 300_000,
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
      requestStream: method.methodKind === "client_streaming" || method.methodKind === "bidi_streaming",
      responseStream: method.methodKind === "server_streaming" || method.methodKind === "bidi_streaming",
      originalName: method.localName,
      requestSerialize: encoder(method.input),
      requestDeserialize: decoder(method.input, maxMessageBytes),
      responseSerialize: responseEncoder(method.output),
      responseDeserialize: (b: Buffer) => fromBinary(method.output, b),
    };
  }
  return definition;
}

type GrpcCall = grpc.ServerUnaryCall<unknown, unknown> | grpc.ServerDuplexStream<unknown, unknown>;

/** How the pipeline reads a grpc-js call. */
export const GRPC_CALLS: CallAccess<GrpcCall, Partial<grpc.ServiceError>> = {
  protocol: "grpc",
  authorization(call) {
    const header = call.metadata.get("authorization");
    return header.length > 0 ? String(header[0]) : undefined;
  },
  peer: peerIdentities,
  cancelled: (call) => call.cancelled,
  expired: (call) => Number(call.getDeadline()) <= Date.now(),
  headers: (call) => call.metadata,
  toError: toGrpcError,
  code: (error) => error.code as number,
};

export function addBinding(
  server: grpc.Server,
  binding: ServiceBinding,
  auth: CallerAuth,
  onInternal: InternalErrorSink,
  observer: CallObserver,
): void {
  const definition = serviceDefinition(binding.service, binding.maxMessageBytes ?? messageLimits.get(server) ?? Number.POSITIVE_INFINITY);
  const implementation: grpc.UntypedServiceImplementation = {};
  const options: PipelineOptions = { auth, onInternal, observer };
  for (const method of binding.service.methods) {
    if (method.methodKind === "bidi_streaming") {
      implementation[method.localName] = answeringStream(binding, method, options);
      continue;
    }
    const invoke = invoker(GRPC_CALLS, binding, method, options);
    implementation[method.localName] = (call: grpc.ServerUnaryCall<unknown, unknown>, callback: grpc.sendUnaryData<unknown>) =>
      invoke(call, call.request, callback);
  }
  server.addService(definition, implementation);
}

/**
 * Requests of one stream read but not yet answered, at most. Past it the
 * stream stops reading until answers go out; so does an answer the client is
 * not reading (grpc-js's write buffer full). Unread requests then stay in
 * HTTP/2's flow-control window, on the client's side: a reader that stops
 * reading stops its own writes, never grows this process's memory.
 */
export const STREAM_MAX_IN_FLIGHT = 256;

/**
 * A bidirectional stream where each request gets one answer from `handler`,
 * in the order answers are ready (VerifyKeyStream). The caller is authorized
 * once, when the stream opens, with the unary method's access; a request the
 * handler refuses gets an answer carrying the error (google.rpc.Status) and
 * the stream goes on. The stream ends when the client half-closes and every
 * answer is out, with the client's cancellation, or at its deadline (grpc-js
 * ends it with DEADLINE_EXCEEDED); answers to requests still in flight then are dropped.
 */
function answeringStream(binding: ServiceBinding, method: DescMethod, options: PipelineOptions) {
  const { onInternal, observer } = options;
  const path = methodPath(binding, method);
  const handler = binding.handlers[method.localName] as (req: unknown, call: unknown) => unknown;
  const open = streamOpener(GRPC_CALLS, binding, method, options);
  return (call: grpc.ServerDuplexStream<unknown, unknown>) => {
    const caller = open(call, (error) => call.emit("error", error));
    if (caller === null) return;
    const callerName = caller.name;
    const context = caller.context;
    let inFlight = 0;
    let blocked = false; // the client is not reading our answers fast enough
    let halfClosed = false;
    let over = false; // cancelled, past its deadline, or failed

    const resumeIfRoom = () => {
      if (!blocked && inFlight < STREAM_MAX_IN_FLIGHT && call.isPaused()) call.resume();
    };
    const send = (answer: unknown, code: number, at: number) => {
      inFlight--;
      if (over) return;
      observer.finished(path, code, at, callerName, "grpc", call.metadata);
      if (!call.write(answer)) {
        blocked = true;
        call.pause();
      }
      if (halfClosed && inFlight === 0) call.end();
      else resumeIfRoom();
    };
    const failed = (id: number, err: unknown, at: number) => {
      const status = toStatusMessage(err, path, onInternal);
      send(errorAnswer(id, status), status.code, at);
    };

    call.on("data", (req: unknown) => {
      if (over) return;
      if (req === UNDECODABLE || req === TOO_LARGE) {
        // Not a request whose id could be echoed: the stream ends with the error.
        over = true;
        const status = toGrpcError(unreadableError(req), path, onInternal);
        observer.finished(path, status.code as number, performance.now(), callerName, "grpc", call.metadata);
        call.emit("error", status);
        return;
      }
      const at = performance.now();
      const id = (req as { correlationId: number }).correlationId;
      if (++inFlight >= STREAM_MAX_IN_FLIGHT) call.pause();
      let answer: unknown;
      try {
        answer = handler(req, context);
      } catch (err) {
        failed(id, err, at);
        return;
      }
      if (answer instanceof Promise) answer.then((a) => send(a, 0, at), (err: unknown) => failed(id, err, at));
      else send(answer, 0, at);
    });
    call.on("drain", () => {
      blocked = false;
      resumeIfRoom();
    });
    call.on("end", () => {
      halfClosed = true;
      if (inFlight === 0 && !over) call.end();
    });
    call.on("cancelled", () => {
      over = true;
    });
    call.on("error", () => {
      over = true;
    });
  };
}

function errorAnswer(correlationId: number, error: ReturnType<typeof toStatusMessage>): VerifyKeyStreamResponse {
  return { $typeName: "apikeys.v1.VerifyKeyStreamResponse", correlationId, result: { case: "error", value: error } };
}

/** Binds and starts listening; resolves with the bound port (useful with port 0). */
export function listenGrpc(server: grpc.Server, host: string, port: number, credentials = grpc.ServerCredentials.createInsecure()): Promise<number> {
  return new Promise((resolve, reject) => {
    server.bindAsync(`${host.includes(":") ? `[${host}]` : host}:${port}`, credentials, (err, bound) => (err ? reject(err) : resolve(bound)));
  });
}
