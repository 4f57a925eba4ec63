// One structured log line per RPC: request id, caller, method, status code,
// protocol, duration. Never the request or response: they carry secrets.
// The hot path stays quiet: answered VerifyKey calls (valid or not, status OK)
// are logged at debug, so a busy gateway does not write a line per request;
// management calls, and every call that fails, are logged at info or above.
import { randomUUID } from "node:crypto";
import { status } from "@grpc/grpc-js";
import type { Level } from "pino";
import { containsSecret } from "../keys/key-format.js";
import type { Logger } from "../logger.js";
import type { RequestHeaders } from "../transport/bindings.js";
import { statusName } from "./grpc-status.js";
import type { Protocol } from "./metrics.js";

/** A caller-chosen request id is logged as given, within reason: it is never a metric label. */
const MAX_REQUEST_ID_LENGTH = 128;

export class RpcLog {
  constructor(
    private readonly logger: Logger,
    /** Paths ("/package.Service/Method") whose successful calls are logged at debug only. */
    private readonly quietPaths: ReadonlySet<string>,
  ) {}

  record(path: string, code: number, protocol: Protocol, caller: string, ms: number, headers: RequestHeaders): void {
    const level = code === 0 ? (this.quietPaths.has(path) ? "debug" : "info") : failureLevel(code);
    if (!this.logger.isLevelEnabled(level)) return;
    this.logger[level](
      {
        requestId: requestId(headers),
        caller: caller || undefined,
        method: path.slice(1),
        code: statusName(code),
        protocol,
        durationMs: Math.round(ms * 1000) / 1000,
      },
      "rpc",
    );
  }
}

/** error: the service failed; warn: a dependency is down or a caller is misconfigured; info: the caller's request was refused. */
function failureLevel(code: number): Level {
  switch (code) {
    case status.UNKNOWN:
    case status.INTERNAL:
    case status.DATA_LOSS:
      return "error";
    case status.DEADLINE_EXCEEDED:
    case status.UNAVAILABLE:
    case status.UNAUTHENTICATED:
      return "warn";
    default:
      return "info";
  }
}

/**
 * x-request-id when the caller sent one, else a fresh id, so a failed call can
 * still be found in the logs. A header carrying a key (a client that mixed up
 * its headers) is replaced, never logged.
 */
function requestId(headers: RequestHeaders): string {
  const value = headers.get("x-request-id");
  const id = Array.isArray(value) ? value[0] : value;
  return typeof id === "string" && id !== "" && id.length <= MAX_REQUEST_ID_LENGTH && !containsSecret(id) ? id : randomUUID();
}
