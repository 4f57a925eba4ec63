// How the CLI reaches a running service: Connect over HTTP for http(s)://
// URLs (the HTTP port, through any proxy), gRPC over HTTP/2 for grpc(s)://
// (the gRPC port). Either way the same generated client and the same errors.
import { type Client, type Interceptor, createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { ApiKeyService } from "../../gen/apikeys/v1/apikeys_pb.js";
import { CliError, EXIT } from "./exit-codes.js";

export const DEFAULT_URL = "http://127.0.0.1:8080";

/** Long enough for a revocation to reach every instance, short enough not to hang on a black hole. */
const CALL_TIMEOUT_MS = 30_000;

export interface ConnectionOptions {
  url: string;
  /** The caller token, sent as `authorization: Bearer <token>`. */
  token?: string;
}

export function connect(options: ConnectionOptions): Client<typeof ApiKeyService> {
  let url: URL;
  try {
    url = new URL(options.url);
  } catch {
    throw new CliError(`--url: "${options.url}" is not a URL (e.g. ${DEFAULT_URL} or grpc://127.0.0.1:50051)`, EXIT.USAGE);
  }
  const token = options.token;
  const interceptors: Interceptor[] = token
    ? [
        (next) => (req) => {
          req.header.set("authorization", `Bearer ${token}`);
          return next(req);
        },
      ]
    : [];
  switch (url.protocol) {
    case "http:":
    case "https:":
      return createClient(
        ApiKeyService,
        createConnectTransport({ baseUrl: url.href, httpVersion: "1.1", interceptors, defaultTimeoutMs: CALL_TIMEOUT_MS }),
      );
    case "grpc:":
    case "grpcs:":
      return createClient(
        ApiKeyService,
        createGrpcTransport({
          baseUrl: `${url.protocol === "grpcs:" ? "https" : "http"}://${url.host}`,
          interceptors,
          defaultTimeoutMs: CALL_TIMEOUT_MS,
        }),
      );
    default:
      throw new CliError(`--url: unsupported scheme "${url.protocol}" (use http, https, grpc or grpcs)`, EXIT.USAGE);
  }
}
