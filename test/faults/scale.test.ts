// Fast variant of test/faults/scenarios/scale.ts (a million keys: scale.slow.test.ts).
import { scaleSuite } from "./scenarios/scale.js";

scaleSuite({ keys: 20_000, samples: 100, timeoutMs: 120_000 });
