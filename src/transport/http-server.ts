// The HTTP port: the same services over the Connect protocol (JSON and
// binary) and gRPC-Web, plus plain HTTP endpoints (health, metrics).
import * as http from "node:http";
import type { ConnectRouter, HandlerContext } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import type { CallerAuth } from "./auth.js";
import type { CallObserver, ServiceBinding } from "./bindings.js";
import { type InternalErrorSink, toConnectError } from "./errors.js";

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
      const impl: Record<string, (req: unknown, ctx: HandlerContext) => Promise<unknown>> = {};
      for (const method of binding.service.methods) {
        const handler = binding.handlers[method.localName] as (req: unknown, call: unknown) => unknown;
        const access = binding.access(method.localName);
        const path = `/${binding.service.typeName}/${method.name}`;
        impl[method.localName] = async (req, ctx) => {
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
