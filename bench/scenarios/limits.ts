import { toBinary } from "@bufbuild/protobuf";
import { VerifyCode, VerifyKeyResponseSchema } from "../../gen/apikeys/v1/apikeys_pb.js";
import {
  type Bench,
  type MainService,
  VERIFY_PATH,
  expectVerify,
  halfNote,
  measureInMemory,
  pairingNote,
  spec,
  verifyFrame,
  wrongAnswers,
} from "./harness.js";

/** 2. A key with rate limits and monthly credits, each call costing a credit (shared counters in Redis). */
export async function limits(b: Bench, main: MainService): Promise<void> {
  const scenario = "2. VerifyKey with rate limits + credits";
  const first = await expectVerify(main.client, main.keys.limited, VerifyCode.VALID, 1);
  if (first.rateLimit === undefined && first.remainingCredits === undefined) {
    b.row({ scenario, target: "≥ 0.6×", verdict: "skipped", notes: "skipped: limits not wired" });
    return;
  }
  const load = spec(b, main.child.target, VERIFY_PATH, [verifyFrame(main.keys.limited, 1)]);
  const measured = await measureInMemory(b, main.child, load);
  const { max, half, ratio } = measured;
  const last = await expectVerify(main.client, main.keys.limited, VerifyCode.VALID, 1);
  const consumed = (first.remainingCredits ?? 0n) - (last.remainingCredits ?? 0n);
  const wrong = wrongAnswers([max, half], toBinary(VerifyKeyResponseSchema, first).length);
  b.row({
    scenario,
    rps: max.rps,
    ratio,
    p50Ms: half.p50Ms,
    p99Ms: half.p99Ms,
    target: "≥ 0.6×",
    verdict: !wrong && ratio >= 0.6 ? "PASS" : "FAIL",
    notes: wrong ?? `${halfNote(half)}; ${consumed} credits consumed${pairingNote(b, measured)}`,
  });
}
