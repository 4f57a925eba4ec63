// Structured JSON logs (pino). Never log a secret: requests are not logged
// whole, and the redaction below is a safety net for fields that might carry one.
import cluster from "node:cluster";
import { pino, type Logger } from "pino";

export type { Logger };

/** `destination` defaults to stdout; tests pass one to read every line the service writes. */
export function createLogger(level: string, destination?: pino.DestinationStream): Logger {
  return pino(
    {
      level,
      // Under a supervisor (WORKERS > 1) each line says which worker wrote it.
      base: cluster.isWorker ? { service: "apikeys", worker: cluster.worker!.id, pid: process.pid } : { service: "apikeys" },
      redact: { paths: ["key", "secret", "token", "pepper", "*.key", "*.secret", "*.token", "*.pepper", "authorization"], censor: "[redacted]" },
      serializers: { err: loggableError },
    },
    destination,
  );
}

/**
 * What of an error a log line may carry. A database error (mysql2) keeps its
 * codes but not its text: its `sql` is the statement with every value in it
 * (names, metadata, hashes), and its message may quote values too ("Duplicate
 * entry '…'", "… near '…'"). Other errors keep type, code, message and stack;
 * a cause is made loggable the same way.
 */
export function loggableError(err: unknown, depth = 0): unknown {
  if (typeof err !== "object" || err === null) return typeof err === "string" ? err : String(err);
  const e = err as Record<string, unknown>;
  const fromDatabase = "sql" in e || "sqlMessage" in e || "sqlState" in e;
  const out: Record<string, unknown> = { type: (e.constructor as { name?: string } | undefined)?.name ?? "Error" };
  for (const field of ["code", "errno", "sqlState", "fatal"]) if (e[field] !== undefined) out[field] = e[field];
  if (!fromDatabase && typeof e.message === "string") out.message = e.message;
  // The stack's first line repeats the message: only the frames of a database error.
  if (typeof e.stack === "string") out.stack = fromDatabase ? e.stack.split("\n").slice(1).join("\n") : e.stack;
  if (e.cause !== undefined && depth < 3) out.cause = loggableError(e.cause, depth + 1);
  return out;
}
