// The one place where errors become wire errors. Domain errors (ApiError) keep
// their code and reason as a google.rpc.ErrorInfo; anything else is an
// internal error whose details are logged, never sent.
import { create, toBinary } from "@bufbuild/protobuf";
import { anyPack } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { Metadata, type ServiceError, status as grpcStatus } from "@grpc/grpc-js";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { type Status as StatusMessage, StatusSchema } from "../../gen/google/rpc/status_pb.js";
import { ApiError, ERROR_DOMAIN, Status } from "../keys/errors.js";

export type InternalErrorSink = (err: unknown, method: string) => void;

function asApiError(err: unknown, method: string, onInternal: InternalErrorSink): ApiError {
  if (err instanceof ApiError) return err;
  onInternal(err, method);
  return new ApiError(Status.INTERNAL, "INTERNAL", "internal error");
}

function errorInfo(err: ApiError) {
  return create(ErrorInfoSchema, { reason: err.reason, domain: ERROR_DOMAIN, metadata: err.metadata });
}

export function toConnectError(err: unknown, method: string, onInternal: InternalErrorSink): ConnectError {
  if (err instanceof ConnectError) return err;
  const e = asApiError(err, method, onInternal);
  return new ConnectError(e.message, e.code as number as Code, undefined, [{ desc: ErrorInfoSchema, value: errorInfo(e) }]);
}

/** The error as a google.rpc.Status message, e.g. for one failed answer on a stream. */
export function toStatusMessage(err: unknown, method: string, onInternal: InternalErrorSink): StatusMessage {
  const e = asApiError(err, method, onInternal);
  return create(StatusSchema, { code: e.code, message: e.message, details: [anyPack(ErrorInfoSchema, errorInfo(e))] });
}

export function toGrpcError(err: unknown, method: string, onInternal: InternalErrorSink): Partial<ServiceError> {
  const e = asApiError(err, method, onInternal);
  const metadata = new Metadata();
  const details = create(StatusSchema, {
    code: e.code,
    message: e.message,
    details: [anyPack(ErrorInfoSchema, errorInfo(e))],
  });
  metadata.set("grpc-status-details-bin", Buffer.from(toBinary(StatusSchema, details)));
  return { code: e.code as number as grpcStatus, details: e.message, metadata };
}
