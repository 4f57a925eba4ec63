// Fast variant of test/faults/scenarios/concurrency.ts (more at once: concurrency.slow.test.ts).
import { concurrencySuite } from "./scenarios/concurrency.js";

concurrencySuite({ perKey: 50, requestIds: 40, retries: 5, walks: 4, timeoutMs: 60_000 });
