// The CallObserver both transports report to: one clock reading per finished
// call, then the metrics and the log line.
import type { CallObserver } from "../transport/bindings.js";
import type { Metrics } from "./metrics.js";
import type { RpcLog } from "./rpc-log.js";

export function callObserver(metrics: Metrics, log: RpcLog): CallObserver {
  return {
    finished(path, code, startedAt, caller, protocol, headers) {
      const ms = performance.now() - startedAt;
      metrics.recordRpc(path, code, protocol, ms / 1000);
      log.record(path, code, protocol, caller, ms, headers);
    },
  };
}
