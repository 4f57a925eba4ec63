// Only a keyed hash of a secret is ever stored or used as a lookup key:
// HMAC-SHA256 with a server-side pepper. Without the pepper, a stolen
// database cannot be used to test guesses offline.
import { createHmac } from "node:crypto";

export class SecretHasher {
  private readonly pepper: Buffer;

  constructor(pepper: string) {
    if (pepper.length < 16) throw new Error("the key pepper must be at least 16 characters");
    this.pepper = Buffer.from(pepper, "utf8");
  }

  /** The 32-byte HMAC-SHA256 of `secret`. */
  hash(secret: string): Buffer {
    return createHmac("sha256", this.pepper).update(secret, "utf8").digest();
  }

  /** The same hash as a 32-character latin1 string: a cheap map key for the cache. */
  hashKey(secret: string): string {
    return createHmac("sha256", this.pepper).update(secret, "utf8").digest("latin1");
  }
}
