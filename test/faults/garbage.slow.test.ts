// Long variant of test/faults/scenarios/garbage.ts: `npm run test:faults`.
import { garbageSuite } from "./scenarios/garbage.js";

garbageSuite({ keys: 1000, floodLanes: 8, timeoutMs: 600_000 });
