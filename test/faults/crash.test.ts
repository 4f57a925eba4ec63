// Fast variant of test/faults/scenarios/crash.ts (more crashes: crash.slow.test.ts).
import { crashSuite } from "./scenarios/crash.js";

crashSuite({ crashes: 1, concurrency: 16, killAfter: 150, timeoutMs: 90_000 });
