// Fast variant of test/faults/scenarios/partition.ts (more revocations, longer watches: partition.slow.test.ts).
import { partitionSuite } from "./scenarios/partition.js";

partitionSuite({ revocations: 6, watchMs: 1000, timeoutMs: 90_000 });
