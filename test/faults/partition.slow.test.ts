// Long variant of test/faults/scenarios/partition.ts: `npm run test:faults`.
import { partitionSuite } from "./scenarios/partition.js";

partitionSuite({ revocations: 40, watchMs: 10_000, timeoutMs: 300_000 });
