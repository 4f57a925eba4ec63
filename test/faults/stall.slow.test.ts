// Long variant of test/faults/scenarios/stall.ts: `npm run test:faults`.
import { stallSuite } from "./scenarios/stall.js";

stallSuite({ revocations: 40, stallLeases: 60, timeoutMs: 300_000 });
