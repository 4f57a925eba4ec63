// The encoded VerifyKey answer: a VerifyKeyResponse held as its protobuf
// bytes, made once per cached key and sent as they are by the gRPC transport
// (the largest cost of a cached VerifyKey is encoding; this makes it none).
// It reads as the message it encodes, so the Connect transport and ext_authz
// use it like any other message. Also here: the answers for other codes and
// with usage data, spliced from the same bytes, and the slabs that hold the
// bytes of cached answers.
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import {
  type ApiKey,
  type Principal,
  type RateLimitState,
  VerifyCode,
  type VerifyKeyResponse,
  VerifyKeyResponseSchema,
} from "../../gen/apikeys/v1/apikeys_pb.js";
import { toApiKey, toPrincipal } from "./mapping.js";
import type { VerifyRecord } from "./records.js";
import { answeredKeyState } from "./verification.js";

/** Where an EncodedVerifyKeyResponse keeps its encoding (see encodingOf). */
export const ENCODING = Symbol("encoding");

/**
 * A VerifyKeyResponse held as its binary encoding. It reads as the message it
 * encodes, so the Connect transport and ext_authz use it like any other
 * (valid and code are fields; key and principal are decoded when read, the
 * last decoding remembered), and the gRPC transport sends its bytes without
 * encoding anything. Immutable: cached answers are shared by every caller.
 * Only where its bytes are kept may change (see AnswerSlabs), never what they say.
 */
export class EncodedVerifyKeyResponse {
  // On the prototype (below): one field less per cached key.
  declare readonly $typeName: VerifyKeyResponse["$typeName"];
  // Own accessor properties (see DECODED_FIELDS): protobuf-es tells whether a
  // message field is set by an own property, so prototype getters would read as unset.
  declare readonly key: ApiKey | undefined;
  declare readonly principal: Principal | undefined;
  readonly code: VerifyCode;
  [ENCODING]: Buffer;

  constructor(code: VerifyCode, encoding: Buffer) {
    this.code = code;
    this[ENCODING] = encoding;
    // The same accessor functions on every instance: V8 keeps them in the shared hidden class, not per object.
    Object.defineProperties(this, DECODED_FIELDS);
  }

  get valid(): boolean {
    return this.code === VerifyCode.VALID;
  }
}
Object.defineProperty(EncodedVerifyKeyResponse.prototype, "$typeName", { value: VerifyKeyResponseSchema.typeName });

/** An answer with usage data (built per call, never cached). */
class UsageResponse extends EncodedVerifyKeyResponse {
  readonly remainingCredits: bigint | undefined;
  readonly rateLimit: RateLimitState | undefined;

  constructor(code: VerifyCode, encoding: Buffer, remainingCredits: bigint | undefined, rateLimit: RateLimitState | undefined) {
    super(code, encoding);
    this.remainingCredits = remainingCredits;
    this.rateLimit = rateLimit;
  }
}

// The latest decodings, oldest first: ext_authz reads key and principal of
// every answer it allows, mostly of a few busy keys. Bounded, unlike keeping
// them with each answer (which is what cached keys no longer do). Decoded
// messages are frozen, as they are shared.
const DECODED_MAX = 128;
const decodings = new Map<EncodedVerifyKeyResponse, VerifyKeyResponse>();

function decoded(answer: EncodedVerifyKeyResponse): VerifyKeyResponse {
  let message = decodings.get(answer);
  if (message === undefined) {
    message = fromBinary(VerifyKeyResponseSchema, answer[ENCODING]);
    if (message.key !== undefined) Object.freeze(message.key);
    if (message.principal !== undefined) Object.freeze(message.principal);
    if (decodings.size >= DECODED_MAX) decodings.delete(decodings.keys().next().value!);
    decodings.set(answer, message);
  }
  return message;
}

const DECODED_FIELDS: PropertyDescriptorMap = {
  key: {
    enumerable: true,
    get(this: EncodedVerifyKeyResponse) {
      return decoded(this).key;
    },
  },
  principal: {
    enumerable: true,
    get(this: EncodedVerifyKeyResponse) {
      return decoded(this).principal;
    },
  },
};

/** An answer over toBinary's result (an exact-size ArrayBuffer of its own), without a copy. */
function encoded(code: VerifyCode, encoding: Uint8Array): EncodedVerifyKeyResponse {
  return new EncodedVerifyKeyResponse(code, Buffer.from(encoding.buffer, encoding.byteOffset, encoding.byteLength));
}

/**
 * The bytes a message already carries, if it is an encoded answer: what the
 * gRPC transport sends instead of encoding it (src/transport/grpc-server.ts).
 */
export function encodingOf(message: object): Buffer | undefined {
  return (message as { readonly [ENCODING]?: Buffer })[ENCODING];
}

/** The answer for a key as loaded, with the code its state has at load (see verification.ts stateAtLoad). */
export function encodeAnswer(record: VerifyRecord, code: VerifyCode, now: number): EncodedVerifyKeyResponse {
  const response = create(VerifyKeyResponseSchema, {
    valid: code === VerifyCode.VALID,
    code,
    key: toApiKey(record.key, now),
    principal: toPrincipal(record),
  });
  return encoded(code, toBinary(VerifyKeyResponseSchema, response));
}

/**
 * The answer of a cached key for another code than its own (EXPIRED,
 * INSUFFICIENT_SCOPE): its own answer with the code changed, and the key's
 * state as an answer with that code shows it.
 */
export function recode(answer: EncodedVerifyKeyResponse, code: VerifyCode): EncodedVerifyKeyResponse {
  const response = fromBinary(VerifyKeyResponseSchema, answer[ENCODING]);
  response.valid = code === VerifyCode.VALID;
  response.code = code;
  if (response.key !== undefined) response.key.state = answeredKeyState(response.key.state, code);
  return encoded(code, toBinary(VerifyKeyResponseSchema, response));
}

/** The encodings of `valid` and `code` alone, by code. */
const heads: Uint8Array[] = [];

/**
 * A VALID answer's key and principal with `code` and usage data. Built from
 * bytes: fields are encoded in field-number order, so the answer's head
 * (valid, code), its key and principal, and the usage fields concatenate to
 * exactly what encoding the whole message gives.
 */
export function withUsage(
  answer: EncodedVerifyKeyResponse,
  code: VerifyCode,
  remainingCredits: bigint | undefined,
  rateLimit: RateLimitState | undefined,
): EncodedVerifyKeyResponse {
  if (answer.code !== VerifyCode.VALID) throw new Error(`usage data on a ${VerifyCode[answer.code]} answer`);
  const head = (heads[code] ??= toBinary(VerifyKeyResponseSchema, create(VerifyKeyResponseSchema, { valid: code === VerifyCode.VALID, code })));
  const usage = create(VerifyKeyResponseSchema, { remainingCredits, rateLimit });
  const tail = toBinary(VerifyKeyResponseSchema, usage);
  const body = answer[ENCODING];
  const from = bodyStart(body);
  const bytes = Buffer.allocUnsafe(head.length + body.length - from + tail.length);
  bytes.set(head, 0);
  body.copy(bytes, head.length, from);
  bytes.set(tail, head.length + body.length - from);
  return new UsageResponse(code, bytes, usage.remainingCredits, usage.rateLimit);
}

/** Where an encoded VerifyKeyResponse's fields after `valid` (1) and `code` (2), both varints, begin. */
function bodyStart(bytes: Uint8Array): number {
  let i = 0;
  while (i < bytes.length && (bytes[i] === 0x08 || bytes[i] === 0x10)) {
    i++;
    while (bytes[i++] & 0x80);
  }
  return i;
}

/** Bytes per slab of AnswerSlabs; answers larger than SLAB_MAX_ANSWER keep a buffer of their own. */
const SLAB_BYTES = 16 * 1024;
const SLAB_MAX_ANSWER = 1024;

interface Slab {
  readonly bytes: Buffer;
  /** Bytes written; only the slab being filled grows. */
  used: number;
  /** Bytes of the answers below: those of cached entries. */
  live: number;
  answers: EncodedVerifyKeyResponse[];
}

/**
 * Where the answers of cached entries keep their bytes: slabs of 16 KB
 * shared by about 90 answers. An ArrayBuffer of its own costs an answer some
 * 300 bytes of heap and malloc on top of its ~180 bytes. A slab is freed when
 * no answer points into it; so that a few long-lived answers cannot pin
 * mostly empty slabs, a slab with less than half of its bytes live is
 * emptied: its remaining answers are copied to the slab being filled. Slabs
 * thus hold at most twice the live answers' bytes, plus the one being filled.
 * Whoever still holds an answer's previous bytes keeps a valid copy (bytes are
 * never rewritten), so moving needs no coordination with callers.
 */
export class AnswerSlabs {
  private current: Slab | null = null;
  private readonly slabs = new Map<ArrayBufferLike, Slab>();

  /** Moves an answer's bytes into a slab, unless it is too large or already there. */
  adopt(answer: EncodedVerifyKeyResponse): void {
    const bytes = answer[ENCODING];
    if (bytes.length <= SLAB_MAX_ANSWER && !this.slabs.has(bytes.buffer)) this.put(answer, bytes);
  }

  /** The answer's entry left the cache. */
  release(answer: EncodedVerifyKeyResponse): void {
    const bytes = answer[ENCODING];
    const slab = this.slabs.get(bytes.buffer);
    if (slab === undefined) return;
    const answers = slab.answers;
    const i = answers.indexOf(answer);
    if (i === -1) return;
    const last = answers.pop()!;
    if (i < answers.length) answers[i] = last;
    slab.live -= bytes.length;
    if (slab !== this.current) this.compact(slab);
  }

  private put(answer: EncodedVerifyKeyResponse, bytes: Uint8Array): void {
    const slab = this.slabFor(bytes.length);
    const view = slab.bytes.subarray(slab.used, slab.used + bytes.length);
    view.set(bytes);
    slab.used += bytes.length;
    slab.live += bytes.length;
    slab.answers.push(answer);
    answer[ENCODING] = view;
  }

  private slabFor(length: number): Slab {
    const full = this.current;
    if (full !== null && full.used + length <= SLAB_BYTES) return full;
    const slab: Slab = { bytes: Buffer.allocUnsafeSlow(SLAB_BYTES), used: 0, live: 0, answers: [] };
    this.slabs.set(slab.bytes.buffer, slab);
    this.current = slab;
    // What the full slab still holds fits in the new one next to `length` bytes: less than half a slab, if anything moves.
    if (full !== null) this.compact(full);
    return slab;
  }

  /** Empties a slab that is no longer filled and less than half live. */
  private compact(slab: Slab): void {
    if (slab.live * 2 >= slab.used) return;
    this.slabs.delete(slab.bytes.buffer);
    const moving = slab.answers;
    slab.answers = [];
    for (const answer of moving) this.put(answer, answer[ENCODING]);
  }
}
