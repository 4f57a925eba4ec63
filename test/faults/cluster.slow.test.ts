// Long variant of test/faults/scenarios/cluster.ts: `npm run test:faults`.
import { clusterSuite } from "./scenarios/cluster.js";

clusterSuite({ keys: 2000, failoverKeys: 2000, revokers: 6, verifiers: 18, timeoutMs: 600_000 });
