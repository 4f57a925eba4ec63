// The CLI's exit codes and how a failure is reported: one table, so that
// scripts can tell "the key is bad" from "the service is down".
import { Code, ConnectError } from "@connectrpc/connect";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { printable } from "./printable.js";

export const EXIT = {
  OK: 0,
  /** verify: the key is not valid (the service answered). */
  INVALID_KEY: 1,
  /** Bad arguments or options. */
  USAGE: 2,
  /** revoke: the confirmation was declined. */
  NOT_CONFIRMED: 3,
  /** UNAUTHENTICATED or PERMISSION_DENIED: check --token, --user, --role. */
  NOT_ALLOWED: 4,
  NOT_FOUND: 5,
  /** The service refused the request as given (INVALID_ARGUMENT, FAILED_PRECONDITION, ALREADY_EXISTS…). */
  REJECTED: 6,
  /** The service could not be reached or cannot answer right now; retrying may help. */
  UNAVAILABLE: 7,
  /** Anything else, e.g. an internal error of the service. */
  FAILED: 8,
} as const;

export type ExitCode = (typeof EXIT)[keyof typeof EXIT];

const MEANINGS: Record<ExitCode, string> = {
  0: "success",
  1: "the key is not valid (verify)",
  2: "usage error",
  3: "not confirmed",
  4: "caller not authenticated or not allowed",
  5: "not found",
  6: "request rejected",
  7: "service unavailable or unreachable",
  8: "other error",
};

export const EXIT_CODES_HELP = `Exit codes:\n${Object.entries(MEANINGS)
  .map(([code, meaning]) => `  ${code}  ${meaning}`)
  .join("\n")}`;

/** A failure the CLI detects itself, with the exit code it means. */
export class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode: ExitCode,
  ) {
    super(message);
  }
}

function exitCodeOf(code: Code): ExitCode {
  switch (code) {
    case Code.Unauthenticated:
    case Code.PermissionDenied:
      return EXIT.NOT_ALLOWED;
    case Code.NotFound:
      return EXIT.NOT_FOUND;
    case Code.InvalidArgument:
    case Code.FailedPrecondition:
    case Code.AlreadyExists:
    case Code.OutOfRange:
    case Code.ResourceExhausted:
      return EXIT.REJECTED;
    case Code.Unavailable:
    case Code.DeadlineExceeded:
    case Code.Aborted:
      return EXIT.UNAVAILABLE;
    default:
      return EXIT.FAILED;
  }
}

export interface ErrorReport {
  exitCode: ExitCode;
  /** The gRPC status name, e.g. "NOT_FOUND"; absent for the CLI's own errors. */
  code?: string;
  message: string;
  /** The google.rpc.ErrorInfo reason, e.g. "KEY_NOT_FOUND". */
  reason?: string;
}

/** What went wrong, without a stack trace: status name, message and reason for service errors. */
export function reportOf(err: unknown): ErrorReport {
  if (err instanceof CliError) return { exitCode: err.exitCode, message: err.message };
  if (err instanceof ConnectError) {
    return {
      exitCode: exitCodeOf(err.code),
      // Code names in gRPC's spelling (NotFound → NOT_FOUND), as every other client shows them.
      code: Code[err.code].replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase(),
      message: err.rawMessage,
      reason: err.findDetails(ErrorInfoSchema)[0]?.reason,
    };
  }
  return { exitCode: EXIT.FAILED, message: err instanceof Error ? err.message : String(err) };
}

export function formatReport(report: ErrorReport): string {
  const code = report.code ? `${report.code}: ` : "";
  const reason = report.reason ? ` (reason: ${printable(report.reason)})` : "";
  // A service's message may quote what it was sent (or, from an impostor, anything at all).
  return `apikeys: ${code}${printable(report.message)}${reason}\n`;
}
