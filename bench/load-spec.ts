// What a load run is and what it measured, whichever tool runs it (load.ts
// picks; h2load.ts and loadgen.ts run): types only, so both can use them
// without importing each other.
export type Tool = "h2load" | "node";

export interface LoadSpec {
  /** host:port of the gRPC port. */
  target: string;
  /** e.g. /apikeys.v1.ApiKeyService/VerifyKey */
  path: string;
  /** Caller token, sent as `authorization: Bearer <token>`. */
  token: string;
  /** gRPC length-prefixed request messages, used round-robin. */
  frames: Buffer[];
  connections: number;
  /** Requests in flight at most, over all connections. */
  inFlight: number;
  durationS: number;
  /** Load before measuring starts (not counted). */
  warmupS: number;
  /** Requests per second over all connections; 0 = as fast as the server answers. */
  rate: number;
  /** Send every frame exactly once, then stop (durationS and rate are ignored). */
  once?: boolean;
  /** Every answer must be a VerifyKeyResponse with this code (Node load generator only). */
  expectCode?: number;
}

export interface LoadResult {
  tool: Tool;
  requests: number;
  /** Requests that did not end with grpc-status 0 (and, with expectCode, the expected code). */
  failed: number;
  /** Why requests failed, e.g. {"grpc-status 14": 3}. */
  failures: Record<string, number>;
  rps: number;
  p50Ms: number;
  p99Ms: number;
  /** Response message bytes per request: an error (trailers only) has none, so this shows what came back. */
  bytesPerResponse: number;
  /**
   * h2load only: the least bytesPerResponse can be. Its data count includes the bytes of answers cut off
   * by --duration (started, not done), which a slow server leaves in flight: at most one per request started
   * and not done, so the true size is between this (every such answer counted) and bytesPerResponse (none).
   */
  bytesPerResponseLow?: number;
}
