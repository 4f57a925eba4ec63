// The HTTP port: the same services over the Connect protocol (JSON and
// binary) and gRPC-Web, plus plain HTTP endpoints (health, metrics). Every
// call goes through the call pipeline both ports share (pipeline.ts); this
// file only reads connect-node's handler contexts.
import * as http from "node:http";
import type { DescMethod } from "@bufbuild/protobuf";
import type { ConnectError, ConnectRouter, HandlerContext } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import type { CallerAuth } from "./auth.js";
import type { Refusals } from "./refusals.js";
import type { CallObserver, ServiceBinding } from "./bindings.js";
import { type InternalErrorSink, toConnectError, toStatusMessage } from "./errors.js";
import { type CallAccess, type PipelineOptions, invoker, methodPath, streamOpener } from "./pipeline.js";

/** A plain HTTP endpoint: answers and returns true, or returns false to pass. */
export type HttpEndpoint = (req: http.IncomingMessage, res: http.ServerResponse) => boolean;

export interface HttpServerOptions {
  bindings: ServiceBinding[];
  auth: CallerAuth;
  onInternal: InternalErrorSink;
  endpoints: HttpEndpoint[];
  maxMessageBytes: number;
  observer: CallObserver;
  limits: HttpLimits;
  refusals: Refusals;
}

/** Bounds on what one client can hold of the HTTP port. */
export interface HttpLimits {
  /** Open connections at most; more are closed at once (Node's server.maxConnections). */
  maxConnections: number;
  /** The whole request head must arrive within this. */
  headersTimeoutMs: number;
  /** The whole request, body included, must arrive within this. */
  requestTimeoutMs: number;
}

/** The HTTP port has no client certificates (TLS, where wanted, ends in front of it). */
const NO_CERTIFICATE: readonly string[] = Object.freeze([]);

/** connect-node answers at the deadline by its own timer; this also catches a call whose deadline passed before the handler ran. */
function expired(ctx: HandlerContext): boolean {
  const left = ctx.timeoutMs();
  return left !== undefined && left <= 0;
}

/** How the pipeline reads a connect-node call. */
export const CONNECT_CALLS: CallAccess<HandlerContext, ConnectError> = {
  protocol: "connect",
  authorization: (ctx) => ctx.requestHeader.get("authorization") ?? undefined,
  peer: () => NO_CERTIFICATE,
  // The signal also aborts at the deadline: that is the deadline, not a cancellation.
  cancelled: (ctx) => ctx.signal.aborted && !expired(ctx),
  expired,
  headers: (ctx) => ctx.requestHeader,
  toError: toConnectError,
  code: (error) => error.code,
};

function routes(bindings: ServiceBinding[], options: PipelineOptions) {
  return (router: ConnectRouter) => {
    for (const binding of bindings) {
      const impl: Record<string, (req: never, ctx: HandlerContext) => unknown> = {};
      for (const method of binding.service.methods) {
        if (method.methodKind === "bidi_streaming") {
          impl[method.localName] = answeringStream(binding, method, options);
          continue;
        }
        const invoke = invoker(CONNECT_CALLS, binding, method, options);
        impl[method.localName] = (req: unknown, ctx: HandlerContext) =>
          new Promise((resolve, reject) => invoke(ctx, req, (error, answer) => (error === null ? resolve(answer) : reject(error))));
      }
      router.service(binding.service, impl as never);
    }
  };
}

/**
 * VerifyKeyStream on the HTTP port (Connect and gRPC-Web need HTTP/2 for a
 * full-duplex stream; over HTTP/1.1 Connect carries it half-duplex): one answer
 * per request, in order. The gRPC port's stream (grpc-server.ts) is the one
 * built for throughput; this one keeps the API the same on both ports.
 */
function answeringStream(binding: ServiceBinding, method: DescMethod, options: PipelineOptions) {
  const path = methodPath(binding, method);
  const handler = binding.handlers[method.localName] as (req: unknown, call: unknown) => unknown;
  const open = streamOpener(CONNECT_CALLS, binding, method, options);
  return (reqs: AsyncIterable<unknown>, ctx: HandlerContext) => answers(path, handler, open, reqs, ctx, options);
}

async function* answers(
  path: string,
  handler: (req: unknown, call: unknown) => unknown,
  open: ReturnType<typeof streamOpener<HandlerContext, ConnectError>>,
  reqs: AsyncIterable<unknown>,
  ctx: HandlerContext,
  { onInternal, observer }: PipelineOptions,
): AsyncGenerator<unknown> {
  let refused: ConnectError | null = null;
  const caller = open(ctx, (error) => {
    refused = error;
  });
  if (caller === null) throw refused;
  for await (const req of reqs) {
    const startedAt = performance.now();
    const id = (req as { correlationId: number }).correlationId;
    try {
      const answer = await handler(req, caller.context);
      observer.finished(path, 0, startedAt, caller.name, "connect", ctx.requestHeader);
      yield answer;
    } catch (err) {
      const status = toStatusMessage(err, path, onInternal);
      observer.finished(path, status.code, startedAt, caller.name, "connect", ctx.requestHeader);
      yield { $typeName: "apikeys.v1.VerifyKeyStreamResponse", correlationId: id, result: { case: "error", value: status } };
    }
  }
}

export function createHttpServer(options: HttpServerOptions): http.Server {
  const connect = connectNodeAdapter({
    routes: routes(options.bindings, options),
    readMaxBytes: options.maxMessageBytes,
    fallback: (req, res) => {
      for (const endpoint of options.endpoints) if (endpoint(req as http.IncomingMessage, res as http.ServerResponse)) return;
      res.writeHead(404, { "content-type": "application/json" });
      // The path is not echoed: it may carry anything (a key in a query parameter, say).
      res.end(JSON.stringify({ code: "not_found", message: "no such route" }));
    },
  });
  const { limits, refusals } = options;
  const server = http.createServer(
    {
      headersTimeout: limits.headersTimeoutMs,
      requestTimeout: limits.requestTimeoutMs,
      // Node checks the two timeouts on this interval (30 s by default): a slow client would get that much more.
      connectionsCheckingInterval: Math.min(1000, limits.headersTimeoutMs),
    },
    connect,
  );
  // Slow clients must not hold sockets forever, nor many clients every file descriptor.
  server.maxConnections = limits.maxConnections;
  server.on("drop", () => refusals.httpConnectionLimit++);
  server.on("clientError", (err: NodeJS.ErrnoException, socket) => {
    if (err.code === "ERR_HTTP_REQUEST_TIMEOUT") refusals.httpTimeout++;
    // Node's default: a 400 (or 408) when the socket can still take it and no response has begun, else nothing.
    if (socket.writable && !(socket as { _httpMessage?: unknown })._httpMessage) socket.end(err.code === "ERR_HTTP_REQUEST_TIMEOUT" ? "HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n\r\n" : "HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n");
    socket.destroy();
  });
  return server;
}

export function listenHttp(server: http.Server, host: string, port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      const addr = server.address();
      resolve(typeof addr === "object" && addr ? addr.port : port);
    });
  });
}
