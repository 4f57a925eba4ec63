// `npm run test:faults`: the slow variants of test/faults (a million keys, long
// soaks, repeated crashes). `npm test` runs their fast variants and excludes these.
import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/faults/**/*.slow.test.ts"],
    pool: "forks",
    // One at a time: each one loads the machine on purpose, and timings are part of what they check.
    maxWorkers: 1,
    testTimeout: 600_000,
    hookTimeout: 900_000,
  },
});
