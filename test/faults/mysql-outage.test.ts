// Fast variant of test/faults/scenarios/mysql-outage.ts (the long soak: mysql-outage.slow.test.ts).
import { QUERY_TIMEOUT_MS } from "../../src/store/mysql-pool.js";
import { mysqlOutageSuite } from "./scenarios/mysql-outage.js";

mysqlOutageSuite({
  cycles: 1,
  cutMs: 1500,
  hangMs: QUERY_TIMEOUT_MS + 1500,
  steadyMs: 1000,
  cachedKeys: 20,
  freshKeys: 300,
  concurrency: 4,
  timeoutMs: 90_000,
});
