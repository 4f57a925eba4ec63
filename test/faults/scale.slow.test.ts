// A million keys: `npm run test:faults` (the fast variant, 20,000 keys, is scale.test.ts).
import { scaleSuite } from "./scenarios/scale.js";

scaleSuite({ keys: 1_000_000, samples: 1000, timeoutMs: 900_000 });
