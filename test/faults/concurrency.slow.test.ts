// Heavier variant of test/faults/scenarios/concurrency.ts: `npm run test:faults`.
import { concurrencySuite } from "./scenarios/concurrency.js";

concurrencySuite({ perKey: 200, requestIds: 300, retries: 5, walks: 20, timeoutMs: 600_000 });
