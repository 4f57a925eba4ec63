#!/usr/bin/env node
// The `apikeys` CLI (package.json "bin"). It runs the TypeScript source
// through tsx, so that it works straight from a clone after `npm ci`, with no
// build step; tsx is therefore a runtime dependency.
import { register } from "tsx/esm/api";

register();
await import("../src/cli/main.ts");
