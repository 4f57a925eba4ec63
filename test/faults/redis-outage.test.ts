// Fast variant of test/faults/scenarios/redis-outage.ts (the long soak: redis-outage.slow.test.ts).
import { redisOutageSuite } from "./scenarios/redis-outage.js";

redisOutageSuite({ instances: 2, cycles: 1, outageMs: 1500, steadyMs: 1000, keys: 40, concurrency: 4, timeoutMs: 60_000 });
