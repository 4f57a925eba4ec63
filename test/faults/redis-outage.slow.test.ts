// Soak variant of test/faults/scenarios/redis-outage.ts: `npm run test:faults`.
import { redisOutageSuite } from "./scenarios/redis-outage.js";

redisOutageSuite({ instances: 3, cycles: 4, outageMs: 5000, steadyMs: 3000, keys: 500, concurrency: 12, timeoutMs: 300_000 });
