// Repeated variant of test/faults/scenarios/crash.ts: `npm run test:faults`.
import { crashSuite } from "./scenarios/crash.js";

crashSuite({ crashes: 6, concurrency: 48, killAfter: 400, timeoutMs: 600_000 });
