// The broadcast's channels and messages: names, shapes, authentication and
// validation. Everything received from Redis passes decode(); a message that
// is not exactly one of the shapes below, or not signed with the key every
// instance derives from the shared KEY_PEPPER, is rejected (the caller counts
// it and distrusts its cache). See docs/revocation.md.
import { createHmac, timingSafeEqual } from "node:crypto";
import { MARK } from "../keys/membership.js";
import type { Invalidation } from "../keys/ports.js";

/**
 * Every channel shares the hash tag {apikeys}: on a Redis Cluster they all
 * live in one slot, so on one shard, whose single thread orders them and whose
 * SPUBLISH count covers every subscribed instance. Versioned, so that
 * incompatible releases never talk to each other.
 */
export const CHANNEL_PREFIX = "apikeys:v2:{apikeys}:";

export const CHANNELS = {
  /** Invalidations, pings and goodbyes of every instance: one channel, so one order for all of them. */
  bus: `${CHANNEL_PREFIX}bus`,
  /** Acknowledgements for one instance's invalidations. */
  ack: (instanceId: string) => `${CHANNEL_PREFIX}ack:${instanceId}`,
} as const;

/** Every channel the service uses, given the ids of the running instances (RedisBroadcast.instanceId). */
export function serviceChannels(instanceIds: Iterable<string>): string[] {
  return [CHANNELS.bus, ...[...instanceIds].map(CHANNELS.ack)];
}

/** The ACL channel pattern that covers every channel of the service (`&apikeys:v2:{apikeys}:*`). */
export const CHANNEL_PATTERN = `${CHANNEL_PREFIX}*`;

export type BusMessage =
  /** An invalidation: `id` is unique per origin `o`, its ack goes to CHANNELS.ack(o). */
  | { t: "inv"; o: string; id: number; e: Invalidation }
  /** A lease ping: only its sender knows the nonce's send time, and accepts each nonce once. */
  | { t: "ping"; o: string; n: string }
  /** The sender stopped: it no longer answers from its cache, wait for it no longer. */
  | { t: "bye"; o: string };

export type AckMessage = { t: "ack"; o: string; id: number };

export const INSTANCE_ID = /^i_[A-Za-z0-9]{12}$/;
export const NONCE = /^[A-Za-z0-9]{16}$/;
/** Far above any real message (a bulk revocation of 100k keys is ~3 MB): bounds what a hostile publisher costs. */
const MAX_MESSAGE_BYTES = 8 * 1024 * 1024;
const MAC_BYTES = 16;
const MAC_CHARS = 22; // base64url of 16 bytes
const ID = /^[A-Za-z0-9._:@|/+=-]{1,128}$/;

/**
 * Signs and checks messages with keys derived from the peppers: every
 * instance has KEY_PEPPER, and a publisher without it can forge nothing.
 * During a pepper rotation an instance holds two peppers and signs with
 * both (one MAC each), so instances on either configuration accept it.
 */
export class MessageAuth {
  private readonly keys: Buffer[];

  constructor(peppers: readonly string[]) {
    if (peppers.length === 0) throw new Error("MessageAuth needs a pepper");
    // A label of its own: the broadcast key is never a key used for anything else.
    this.keys = peppers.map((p) => createHmac("sha256", p).update("apikeys broadcast v2").digest());
  }

  seal(channel: string, body: object): string {
    const json = JSON.stringify(body);
    return `${this.keys.map((k) => mac(k, channel, json)).join(",")}.${json}`;
  }

  /** The message's JSON text if one of its MACs is valid under one of our keys, else null. */
  open(channel: string, raw: string): string | null {
    const dot = raw.indexOf(".");
    if (dot < MAC_CHARS || dot > (MAC_CHARS + 1) * 4) return null;
    const json = raw.slice(dot + 1);
    for (const given of raw.slice(0, dot).split(",")) {
      if (given.length !== MAC_CHARS) return null;
      const bytes = Buffer.from(given, "base64url");
      if (bytes.length !== MAC_BYTES) return null;
      for (const key of this.keys) {
        if (timingSafeEqual(bytes, Buffer.from(mac(key, channel, json), "base64url"))) return json;
      }
    }
    return null;
  }
}

function mac(key: Buffer, channel: string, json: string): string {
  // The channel is signed too: a message replayed on another channel (another origin's acks) is rejected.
  return createHmac("sha256", key).update(channel).update("\0").update(json).digest().subarray(0, MAC_BYTES).toString("base64url");
}

export type Decoded<T> = { ok: true; message: T } | { ok: false; reason: string };

/** A message from the bus channel, checked: signature, then exact shape. */
export function decodeBus(auth: MessageAuth, raw: string): Decoded<BusMessage> {
  const value = opened(auth, CHANNELS.bus, raw);
  if (!value.ok) return value;
  const m = value.message as Record<string, unknown>;
  if (typeof m.o !== "string" || !INSTANCE_ID.test(m.o)) return bad("origin");
  switch (m.t) {
    case "inv":
      if (!exactKeys(m, ["t", "o", "id", "e"]) || !isSeq(m.id) || !isInvalidation(m.e)) return bad("invalidation shape");
      return { ok: true, message: m as BusMessage };
    case "ping":
      if (!exactKeys(m, ["t", "o", "n"]) || typeof m.n !== "string" || !NONCE.test(m.n)) return bad("ping shape");
      return { ok: true, message: m as BusMessage };
    case "bye":
      if (!exactKeys(m, ["t", "o"])) return bad("bye shape");
      return { ok: true, message: m as BusMessage };
    default:
      return bad("type");
  }
}

/** A message from this instance's ack channel, checked: signature, then exact shape. */
export function decodeAck(auth: MessageAuth, channel: string, raw: string): Decoded<AckMessage> {
  const value = opened(auth, channel, raw);
  if (!value.ok) return value;
  const m = value.message as Record<string, unknown>;
  if (m.t !== "ack" || !exactKeys(m, ["t", "o", "id"]) || typeof m.o !== "string" || !INSTANCE_ID.test(m.o) || !isSeq(m.id)) {
    return bad("ack shape");
  }
  return { ok: true, message: m as AckMessage };
}

function opened(auth: MessageAuth, channel: string, raw: unknown): Decoded<unknown> {
  if (typeof raw !== "string") return bad("not text");
  if (raw.length > MAX_MESSAGE_BYTES) return bad("too large");
  const json = auth.open(channel, raw);
  if (json === null) return bad("signature");
  let value: unknown;
  try {
    value = JSON.parse(json);
  } catch {
    return bad("json");
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) return bad("not an object");
  return { ok: true, message: value };
}

function bad(reason: string): { ok: false; reason: string } {
  return { ok: false, reason };
}

function exactKeys(m: Record<string, unknown>, keys: readonly string[]): boolean {
  const own = Object.keys(m);
  return own.length === keys.length && keys.every((k) => Object.hasOwn(m, k));
}

function isSeq(v: unknown): v is number {
  return typeof v === "number" && Number.isSafeInteger(v) && v > 0;
}

function isMark(v: unknown): v is string {
  return typeof v === "string" && MARK.test(v);
}

function isId(v: unknown): v is string {
  return typeof v === "string" && ID.test(v);
}

function isInvalidation(v: unknown): v is Invalidation {
  if (typeof v !== "object" || v === null || Array.isArray(v)) return false;
  const e = v as Record<string, unknown>;
  switch (e.kind) {
    case "keys":
      return exactKeys(e, ["kind", "keyIds"]) && Array.isArray(e.keyIds) && e.keyIds.length > 0 && e.keyIds.every(isId);
    case "created":
      // At most a bulk's worth; each mark is 8 bytes of a secret's hash (src/keys/membership.ts).
      return exactKeys(e, ["kind", "marks"]) && Array.isArray(e.marks) && e.marks.length > 0 && e.marks.length <= 100_000 && e.marks.every(isMark);
    case "member":
      return exactKeys(e, ["kind", "organizationId", "userId"]) && isId(e.organizationId) && isId(e.userId);
    case "org":
      return exactKeys(e, ["kind", "organizationId"]) && isId(e.organizationId);
    default:
      return false;
  }
}
