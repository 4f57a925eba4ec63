// Only a keyed hash of a secret is ever stored or used as a lookup key:
// HMAC-SHA256 with a server-side pepper. Without the pepper, a stolen
// database cannot be used to test guesses offline.
//
// Pepper rotation: the hasher may also hold the previous pepper. New hashes
// always use the current one; a secret the current pepper does not find is
// looked up once more under the previous pepper and, when found, its stored
// hash is replaced with the current one (see Verifier). A hash is a one-way
// function of the secret, which the service never keeps, so re-hashing can
// only happen when a key is presented.
//
// The verification cache identifies a secret by a plain SHA-256 of it
// instead (cacheKey): it never leaves the process, secrets carry 190 bits of
// randomness (key-format.ts) so it gives nothing to guess from, and it costs
// a seventh of an HMAC, which was most of a cached VerifyKey's own CPU.
import { createHmac, hash } from "node:crypto";

export class SecretHasher {
  private readonly pepper: Buffer;
  private readonly previousPepper: Buffer | null;

  constructor(pepper: string, previousPepper: string | null = null) {
    if (pepper.length < 16 || (previousPepper !== null && previousPepper.length < 16)) {
      throw new Error("a key pepper must be at least 16 characters");
    }
    this.pepper = Buffer.from(pepper, "utf8");
    this.previousPepper = previousPepper === null ? null : Buffer.from(previousPepper, "utf8");
  }

  /** The 32-byte HMAC-SHA256 of `secret`. */
  hash(secret: string): Buffer {
    return createHmac("sha256", this.pepper).update(secret, "utf8").digest();
  }

  /**
   * The verification cache's identity of `secret`: its SHA-256 as a 32-character
   * latin1 string (a cheap map key), never stored. One call, no object built.
   */
  cacheKey(secret: string): string {
    return hash("sha256", secret, "latin1");
  }

  /** The hash `secret` had under the previous pepper; null when no rotation is in progress. */
  previousHash(secret: string): Buffer | null {
    return this.previousPepper === null ? null : createHmac("sha256", this.previousPepper).update(secret, "utf8").digest();
  }
}
