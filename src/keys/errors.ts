// Domain errors carry a gRPC status code and a stable ErrorInfo reason. They
// are raised by the domain and turned into wire errors only at the transport
// edge (src/transport/errors.ts).

/** gRPC status codes (the same numbers grpc-js and Connect use). */
export const Status = {
  CANCELLED: 1,
  UNKNOWN: 2,
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  NOT_FOUND: 5,
  ALREADY_EXISTS: 6,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  FAILED_PRECONDITION: 9,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  UNAUTHENTICATED: 16,
} as const;
export type StatusCode = (typeof Status)[keyof typeof Status];

export const ERROR_DOMAIN = "apikeys.dev";

export class ApiError extends Error {
  constructor(
    readonly code: StatusCode,
    /** Stable UPPER_SNAKE_CASE reason for google.rpc.ErrorInfo. */
    readonly reason: string,
    message: string,
    readonly metadata: Record<string, string> = {},
  ) {
    super(message);
    this.name = "ApiError";
  }
}

export function invalidArgument(field: string, message: string): ApiError {
  return new ApiError(Status.INVALID_ARGUMENT, "INVALID_ARGUMENT", `${field}: ${message}`, { field });
}

export function keyNotFound(keyId: string): ApiError {
  return new ApiError(Status.NOT_FOUND, "KEY_NOT_FOUND", `key ${keyId} not found`, { key_id: keyId });
}

/** A dependency (database, Redis) failed: the service cannot decide right now. */
export function unavailable(what: string, cause: unknown): ApiError {
  const err = new ApiError(Status.UNAVAILABLE, "DEPENDENCY_UNAVAILABLE", `${what} is unavailable; retry later`, {
    dependency: what,
  });
  (err as { cause?: unknown }).cause = cause;
  return err;
}

export function isApiError(err: unknown): err is ApiError {
  return err instanceof ApiError;
}
