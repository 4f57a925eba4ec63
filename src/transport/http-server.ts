// The HTTP port: the same services over the Connect protocol (JSON and
// binary) and gRPC-Web, plus plain HTTP endpoints (health, metrics).
import * as http from "node:http";
import type { ConnectRouter, HandlerContext } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import type { CallerAuth } from "./auth.js";
import type { CallObserver, ServiceBinding } from "./bindings.js";
import { type InternalErrorSink, toConnectError, toStatusMessage } from "./errors.js";

/** A plain HTTP endpoint: answers and returns true, or returns false to pass. */
export type HttpEndpoint = (req: http.IncomingMessage, res: http.ServerResponse) => boolean;

export interface HttpServerOptions {
  bindings: ServiceBinding[];
  auth: CallerAuth;
  onInternal: InternalErrorSink;
  endpoints: HttpEndpoint[];
  maxMessageBytes: number;
  observer: CallObserver;
}

function routes(bindings: ServiceBinding[], auth: CallerAuth, onInternal: InternalErrorSink, observer: CallObserver) {
  return (router: ConnectRouter) => {
    for (const binding of bindings) {
      const impl: Record<string, (req: never, ctx: HandlerContext) => unknown> = {};
      for (const method of binding.service.methods) {
        const handler = binding.handlers[method.localName] as (req: unknown, call: unknown) => unknown;
        const access = binding.access(method.localName);
        const path = `/${binding.service.typeName}/${method.name}`;
        if (method.methodKind === "bidi_streaming") {
          impl[method.localName] = (reqs: AsyncIterable<unknown>, ctx: HandlerContext) =>
            answeringStream(path, handler, reqs, ctx, access, auth, onInternal, observer);
          continue;
        }
        impl[method.localName] = async (req: unknown, ctx: HandlerContext) => {
          const startedAt = performance.now();
          let callerName = "";
          try {
            const caller = auth.authorize(ctx.requestHeader.get("authorization") ?? undefined, access);
            callerName = caller.name;
            const res = await handler(req, caller.context);
            observer.finished(path, 0, startedAt, callerName, "connect", ctx.requestHeader);
            return res;
          } catch (err) {
            const error = toConnectError(err, path, onInternal);
            observer.finished(path, error.code, startedAt, callerName, "connect", ctx.requestHeader);
            throw error;
          }
        };
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
async function* answeringStream(
  path: string,
  handler: (req: unknown, call: unknown) => unknown,
  reqs: AsyncIterable<unknown>,
  ctx: HandlerContext,
  access: ReturnType<ServiceBinding["access"]>,
  auth: CallerAuth,
  onInternal: InternalErrorSink,
  observer: CallObserver,
): AsyncGenerator<unknown> {
  let caller;
  try {
    caller = auth.authorize(ctx.requestHeader.get("authorization") ?? undefined, access);
  } catch (err) {
    const error = toConnectError(err, path, onInternal);
    observer.finished(path, error.code, performance.now(), "", "connect", ctx.requestHeader);
    throw error;
  }
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
    routes: routes(options.bindings, options.auth, options.onInternal, options.observer),
    readMaxBytes: options.maxMessageBytes,
    fallback: (req, res) => {
      for (const endpoint of options.endpoints) if (endpoint(req as http.IncomingMessage, res as http.ServerResponse)) return;
      res.writeHead(404, { "content-type": "application/json" });
      res.end(JSON.stringify({ code: "not_found", message: `no route for ${req.method} ${req.url}` }));
    },
  });
  const server = http.createServer(connect);
  // Slow clients must not hold sockets forever.
  server.headersTimeout = 10_000;
  server.requestTimeout = 30_000;
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
