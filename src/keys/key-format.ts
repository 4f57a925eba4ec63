// The key string: `<prefix>_<random><checksum>`.
//   random   — 32 base62 characters from a CSPRNG (32 · log2(62) ≈ 190.5 bits)
//   checksum — CRC32 of `<prefix>_<random>`, as 6 base62 characters
// The checksum lets VerifyKey reject typos and junk without any lookup.
import { randomFillSync } from "node:crypto";
import { crc32 } from "node:zlib";

const BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
export const RANDOM_LENGTH = 32;
export const CHECKSUM_LENGTH = 6;
const TAIL_LENGTH = RANDOM_LENGTH + CHECKSUM_LENGTH;
export const PREFIX_PATTERN = /^[a-z][a-z0-9_]{0,15}$/;
const MAX_PREFIX_LENGTH = 16;
/** Longest well-formed key string; anything longer is not a key. */
export const MAX_KEY_LENGTH = MAX_PREFIX_LENGTH + 1 + TAIL_LENGTH;

// charCode → base62 digit value, or -1.
const DIGIT = new Int8Array(128).fill(-1);
for (let i = 0; i < BASE62.length; i++) DIGIT[BASE62.charCodeAt(i)] = i;

// CSPRNG bytes drawn in blocks: a CreateKey needs three random strings (secret, key id, audit event id),
// and a randomBytes call each was 5% of its CPU; one randomFillSync now serves about 25 keys. A byte is
// used once and zeroed as it is taken, so the block never holds the randomness of a key already made.
const RANDOM_BLOCK = 4096;
const randomBlock = Buffer.alloc(RANDOM_BLOCK);
let randomAt = RANDOM_BLOCK;

function randomByte(): number {
  if (randomAt === RANDOM_BLOCK) {
    randomFillSync(randomBlock);
    randomAt = 0;
  }
  const b = randomBlock[randomAt];
  randomBlock[randomAt++] = 0;
  return b;
}

/** `length` uniformly random base62 characters (rejection sampling: no modulo bias). */
export function randomBase62(length: number): string {
  let out = "";
  while (out.length < length) {
    const b = randomByte();
    if (b < 248) out += BASE62[b % 62]; // 248 = 4 · 62
  }
  return out;
}

function checksum(body: string): string {
  let n = crc32(body);
  let out = "";
  for (let i = 0; i < CHECKSUM_LENGTH; i++) {
    out = BASE62[n % 62] + out;
    n = Math.floor(n / 62);
  }
  return out;
}

export function isValidPrefix(prefix: string): boolean {
  return PREFIX_PATTERN.test(prefix);
}

/** Mints a new secret with the given (already validated) prefix. */
export function generateSecret(prefix: string): string {
  const body = `${prefix}_${randomBase62(RANDOM_LENGTH)}`;
  return body + checksum(body);
}

/**
 * True when `key` has the shape of a key and its checksum matches. Cheap and
 * allocation-light: it runs on every VerifyKey before any lookup.
 */
export function isWellFormed(key: string): boolean {
  const len = key.length;
  if (len < TAIL_LENGTH + 2 || len > MAX_KEY_LENGTH) return false;
  const sep = len - TAIL_LENGTH - 1;
  if (key.charCodeAt(sep) !== 95 /* _ */) return false;
  // prefix: [a-z][a-z0-9_]*
  const first = key.charCodeAt(0);
  if (first < 97 || first > 122) return false;
  for (let i = 1; i < sep; i++) {
    const c = key.charCodeAt(i);
    if (!((c >= 97 && c <= 122) || (c >= 48 && c <= 57) || c === 95)) return false;
  }
  for (let i = sep + 1; i < len; i++) {
    const c = key.charCodeAt(i);
    if (c >= 128 || DIGIT[c] < 0) return false;
  }
  const body = key.slice(0, len - CHECKSUM_LENGTH);
  let n = crc32(body);
  for (let i = len - 1; i >= len - CHECKSUM_LENGTH; i--) {
    if (DIGIT[key.charCodeAt(i)] !== n % 62) return false;
    n = Math.floor(n / 62);
  }
  return true;
}

// Where a key's tail may start: a "_" followed by at least 38 base62 characters (32 random, 6 checksum). A
// lookahead, so that every "_" is tried and nothing after the 38 characters matters: a key followed directly by
// a letter or digit ("…q2Lkx") is still a key, and so is one inside a longer run of them.
const KEY_TAIL_START = /_(?=[0-9A-Za-z]{38})/g;

/**
 * True when `value` contains a well-formed key anywhere in it, so that text
 * headed for storage or logs can be kept free of secrets. The checksum makes a
 * false alarm about one in four billion per candidate.
 */
export function containsSecret(value: string): boolean {
  if (value.length < TAIL_LENGTH + 2) return false;
  for (const m of value.matchAll(KEY_TAIL_START)) {
    const end = m.index + 1 + TAIL_LENGTH;
    for (let start = Math.max(0, m.index - MAX_PREFIX_LENGTH); start < m.index; start++) {
      if (isWellFormed(value.slice(start, end))) return true;
    }
  }
  return false;
}

/** The prefix of a well-formed key. */
export function prefixOf(key: string): string {
  return key.slice(0, key.length - TAIL_LENGTH - 1);
}

/** Non-secret preview, e.g. "trv_ak_3Fz9…q2Lk": the prefix, 4 random characters, the last 4. */
export function previewOf(key: string): string {
  const sep = key.length - TAIL_LENGTH - 1;
  return `${key.slice(0, sep + 5)}…${key.slice(-4)}`;
}

/** A new public key id, e.g. "key_5Wq0…" (not secret, not guessable). */
export function newKeyId(): string {
  return `key_${randomBase62(22)}`;
}
