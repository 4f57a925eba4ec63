// Every scenario of `npm run bench`, by the name `--only` takes, in the order
// a full run measures them (the numbering). A scenario is a file of
// its own in this directory, sharing what harness.ts offers; adding one is
// that file and a line here.
import { cached } from "./cached.js";
import { cold } from "./cold.js";
import { createKeys } from "./create.js";
import type { Bench, MainService } from "./harness.js";
import { limits } from "./limits.js";
import { limitsCluster } from "./limits-cluster.js";
import { memory } from "./memory.js";
import { negative } from "./negative.js";
import { replica } from "./replica.js";
import { revoke } from "./revoke.js";
import { revokeCluster, revokeMany, revokeStalled } from "./revoke-topologies.js";
import { workers } from "./workers.js";

export type ScenarioRun = (b: Bench, main: MainService) => Promise<void>;

export const SCENARIOS = {
  cached,
  workers,
  limits,
  "limits-cluster": limitsCluster,
  cold,
  replica,
  negative,
  create: createKeys,
  revoke,
  "revoke-cluster": revokeCluster,
  "revoke-stalled": revokeStalled,
  "revoke-many": revokeMany,
  memory,
} satisfies Record<string, ScenarioRun>;

export type ScenarioName = keyof typeof SCENARIOS;

export { baseline } from "./baseline.js";
export { profileCached } from "./cached.js";
export { type Bench, type MainService, type Settings, startMainService } from "./harness.js";
