// Fast variant of test/faults/scenarios/many-instances.ts (the long race: many-instances.slow.test.ts).
import { manyInstancesSuite } from "./scenarios/many-instances.js";

manyInstancesSuite({ instances: 10, keys: 60, revokers: 3, verifiers: 8, timeoutMs: 180_000 });
