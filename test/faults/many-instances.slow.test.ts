// Long variant of test/faults/scenarios/many-instances.ts: `npm run test:faults`.
import { manyInstancesSuite } from "./scenarios/many-instances.js";

manyInstancesSuite({ instances: 10, keys: 2000, revokers: 6, verifiers: 24, timeoutMs: 600_000 });
