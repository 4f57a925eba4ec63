import { configDefaults, defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // The slow fault and scale variants run under `npm run test:faults` (vitest.faults.config.ts).
    exclude: [...configDefaults.exclude, "test/**/*.slow.test.ts"],
    // Integration and e2e tests start servers and open pools; forks isolate them.
    pool: "forks",
    testTimeout: 30_000,
    hookTimeout: 60_000,
    // Two cores on CI: run two files at a time.
    maxWorkers: 2,
  },
});
