import { toBinary } from "@bufbuild/protobuf";
import { VerifyCode, VerifyKeyResponseSchema } from "../../gen/apikeys/v1/apikeys_pb.js";
import { generateSecret } from "../../src/keys/key-format.js";
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

/** 4. Malformed keys (rejected by shape and checksum) and well-formed unknown keys (negative cache). */
export async function negative(b: Bench, main: MainService): Promise<void> {
  const plain = main.keys.plain;
  // Another last character breaks the checksum; the shape stays a key's.
  const malformed = plain.slice(0, -1) + (plain.endsWith("A") ? "B" : "A");
  const unknown = generateSecret("sk");
  for (const [scenario, key, needsNoLookup] of [
    ["4. malformed key", malformed, true],
    ["4. unknown key (well-formed)", unknown, false],
  ] as const) {
    const answer = await expectVerify(main.client, key, VerifyCode.NOT_FOUND);
    const before = await main.child.stats();
    const load = spec(b, main.child.target, VERIFY_PATH, [verifyFrame(key)]);
    const measured = await measureInMemory(b, main.child, load);
    const { max, half, ratio } = measured;
    await expectVerify(main.client, key, VerifyCode.NOT_FOUND);
    const after = await main.child.stats();
    const lookups = (after.storeCalls.findByHash ?? 0) - (before.storeCalls.findByHash ?? 0);
    const calls = after.verified[VerifyCode.NOT_FOUND] - before.verified[VerifyCode.NOT_FOUND];
    const wrong = wrongAnswers([max, half], toBinary(VerifyKeyResponseSchema, answer).length);
    b.row({
      scenario,
      rps: max.rps,
      ratio,
      p50Ms: half.p50Ms,
      p99Ms: half.p99Ms,
      target: needsNoLookup ? "≥ 0.9×; 0 MySQL lookups" : "≥ 0.9×",
      verdict: !wrong && ratio >= 0.9 && (!needsNoLookup || lookups === 0) ? "PASS" : "FAIL",
      notes: wrong ?? `${halfNote(half)}; ${lookups} MySQL lookups in ${calls} calls${pairingNote(b, measured)}`,
    });
  }
}
