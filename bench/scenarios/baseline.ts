import { toBinary } from "@bufbuild/protobuf";
import mysql from "mysql2/promise";
import { VerifyCode, VerifyKeyResponseSchema } from "../../gen/apikeys/v1/apikeys_pb.js";
import { startServer } from "../children.js";
import { type Tool } from "../load.js";
import {
  type Bench,
  type MainService,
  VERIFY_PATH,
  client,
  expectVerify,
  halfNote,
  maxAndHalf,
  mb,
  serviceEnv,
  spec,
  verifyFrame,
  wrongAnswers,
} from "./harness.js";

/**
 * The no-op baseline: the same grpc-js stack, caller auth and port setup,
 * answering the bytes the service answers for the cached key. Measured with
 * every tool the run uses (the Node load generator always: it shows its
 * headroom over the cold scenarios it drives).
 */
export async function baseline(b: Bench, main: MainService): Promise<void> {
  const answer = await expectVerify(main.client, main.keys.plain, VerifyCode.VALID);
  const encoded = toBinary(VerifyKeyResponseSchema, answer);
  const child = await startServer("baseline", {
    env: serviceEnv(b, "mysql://unused/unused", { BENCH_BASELINE_RESPONSE: Buffer.from(encoded).toString("base64") }),
  });
  b.baselineChild = child;
  try {
    const c = client(child);
    await expectVerify(c, main.keys.plain, VerifyCode.VALID);
    for (const tool of new Set<Tool>([b.tool, "node"])) {
      const { max, half } = await maxAndHalf(tool, spec(b, child.target, VERIFY_PATH, [verifyFrame(main.keys.plain)]));
      const wrong = wrongAnswers([max, half], encoded.length);
      if (wrong) throw new Error(`the baseline's answers are wrong: ${wrong}`);
      b.baseline[tool] = max;
      b.row({
        scenario: `no-op baseline (${tool === "node" ? "Node load generator" : "h2load"})`,
        rps: max.rps,
        ratio: 1,
        p50Ms: half.p50Ms,
        p99Ms: half.p99Ms,
        target: "—",
        verdict: "info",
        notes: `${halfNote(half)}; ${encoded.length}-byte answers; RSS ${mb((await child.stats()).rss)} MB`,
      });
    }
  } catch (err) {
    b.baselineChild = undefined;
    await child.stop();
    throw err;
  }
}
