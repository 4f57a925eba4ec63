// Soak variant of test/faults/scenarios/mysql-outage.ts: `npm run test:faults`.
import { QUERY_TIMEOUT_MS } from "../../src/store/mysql-pool.js";
import { mysqlOutageSuite } from "./scenarios/mysql-outage.js";

mysqlOutageSuite({
  cycles: 3,
  cutMs: 5000,
  hangMs: 3 * QUERY_TIMEOUT_MS,
  steadyMs: 3000,
  cachedKeys: 200,
  freshKeys: 2000,
  concurrency: 12,
  timeoutMs: 600_000,
});
