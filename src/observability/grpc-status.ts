import { status } from "@grpc/grpc-js";

/** The name logs and metric labels use for a gRPC status code, e.g. "NOT_FOUND" for 5. */
export function statusName(code: number): string {
  return status[code] ?? String(code);
}
