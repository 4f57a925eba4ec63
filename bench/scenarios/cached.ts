import { copyFile, mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { toBinary } from "@bufbuild/protobuf";
import { VerifyCode, VerifyKeyResponseSchema } from "../../gen/apikeys/v1/apikeys_pb.js";
import { startServer } from "../children.js";
import { runLoad } from "../load.js";
import { topSelfTime } from "../profile.js";
import {
  type Bench,
  type MainService,
  VERIFY_PATH,
  client,
  expectVerify,
  halfNote,
  measureInMemory,
  pairingNote,
  serviceEnv,
  spec,
  verifyFrame,
  wrongAnswers,
} from "./harness.js";

/** 1. A valid key answered from the cache. */
export async function cached(b: Bench, main: MainService): Promise<void> {
  const answer = await expectVerify(main.client, main.keys.plain, VerifyCode.VALID);
  const load = spec(b, main.child.target, VERIFY_PATH, [verifyFrame(main.keys.plain)]);
  const measured = await measureInMemory(b, main.child, load);
  const { max, half, ratio } = measured;
  await expectVerify(main.client, main.keys.plain, VerifyCode.VALID);
  const wrong = wrongAnswers([max, half], toBinary(VerifyKeyResponseSchema, answer).length);
  b.row({
    scenario: "1. cached VerifyKey (valid key)",
    rps: max.rps,
    ratio,
    p50Ms: half.p50Ms,
    p99Ms: half.p99Ms,
    target: "≥ 0.9×; p50, p99 ≤ 2 ms",
    verdict: !wrong && ratio >= 0.9 && half.p50Ms <= 2 && half.p99Ms <= 2 ? "PASS" : "FAIL",
    notes: wrong ?? halfNote(half) + pairingNote(b, measured),
  });
}

/**
 * The service under the cached load with node --cpu-prof, apart from the
 * measured runs (profiling slows it down). Keeps the profile as `destination`
 * (open it in Chrome DevTools or speedscope) and returns the top self-time functions.
 */
export async function profileCached(b: Bench, main: MainService, destination: string, root: string): Promise<string[]> {
  const dir = await mkdtemp(join(tmpdir(), "apikeys-bench-profile-"));
  try {
    const child = await startServer("service", { env: serviceEnv(b, b.scratchUrl), cpuProfileDir: dir });
    try {
      await expectVerify(client(child), main.keys.plain, VerifyCode.VALID);
      await runLoad(b.tool, spec(b, child.target, VERIFY_PATH, [verifyFrame(main.keys.plain)]));
    } finally {
      await child.stop();
    }
    const file = (await readdir(dir)).find((f) => f.endsWith(".cpuprofile"));
    if (!file) throw new Error("the profiled server wrote no CPU profile");
    await copyFile(join(dir, file), destination);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  return [`profile: ${destination}`, ...(await topSelfTime(destination, 20, root))];
}
