// Fast variant of test/faults/scenarios/cluster.ts (longer races: cluster.slow.test.ts).
import { clusterSuite } from "./scenarios/cluster.js";

clusterSuite({ keys: 120, failoverKeys: 400, revokers: 3, verifiers: 6, timeoutMs: 120_000 });
