// Fast variant of test/faults/scenarios/cluster.ts: the race only (the failover, which takes a minute: cluster.slow.test.ts).
import { clusterSuite } from "./scenarios/cluster.js";

clusterSuite({ keys: 100, failoverKeys: 0, revokers: 3, verifiers: 6, timeoutMs: 120_000 });
