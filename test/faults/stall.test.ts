// Fast variant of test/faults/scenarios/stall.ts (more revocations, a longer stall: stall.slow.test.ts).
import { stallSuite } from "./scenarios/stall.js";

stallSuite({ revocations: 6, stallLeases: 6, timeoutMs: 120_000 });
