// Fast variant of test/faults/scenarios/garbage.ts (a longer flood: garbage.slow.test.ts).
import { garbageSuite } from "./scenarios/garbage.js";

garbageSuite({ keys: 30, floodLanes: 1, timeoutMs: 120_000 });
