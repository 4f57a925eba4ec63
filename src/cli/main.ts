// Entry point of the `apikeys` command (bin/apikeys.js runs this file).
import { run } from "./program.js";

process.exitCode = await run(process.argv.slice(2), {
  stdin: process.stdin,
  stdout: process.stdout,
  stderr: process.stderr,
  now: Date.now,
});
