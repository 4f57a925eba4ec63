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
    },
    destination,
  );
}
