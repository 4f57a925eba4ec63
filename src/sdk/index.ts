// The TypeScript SDK for verifying callers (gateways, services): verify() as
// one function, with every concurrent call of the process on one
// VerifyKeyStream. A call is written to the stream at once (no batching timer:
// HTTP/2 puts the writes of one event-loop turn in the same packets), so
// sharing a stream adds no latency; it only removes a unary call's per-call
// cost (a new HTTP/2 stream, headers, trailers) on both sides.
//
// When the stream is not available (not yet open, broken, an older server
// without it) calls go out as unary VerifyKey, and the stream is opened again
// with exponential back-off. A call in flight on a stream that breaks is sent
// again as a unary call when that is safe: a verification with cost > 0 may
// have consumed credits already, so it fails with UNAVAILABLE instead.
// See docs/sdk.md.
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import * as grpc from "@grpc/grpc-js";
import {
  ApiKeyService,
  type VerifyKeyRequest,
  VerifyKeyRequestSchema,
  type VerifyKeyResponse,
  VerifyKeyResponseSchema,
  type VerifyKeyStreamRequest,
  VerifyKeyStreamRequestSchema,
  type VerifyKeyStreamResponse,
  VerifyKeyStreamResponseSchema,
} from "../../gen/apikeys/v1/apikeys_pb.js";

export { VerifyCode, type VerifyKeyResponse } from "../../gen/apikeys/v1/apikeys_pb.js";

export interface VerifierClientOptions {
  /** host:port of the service's gRPC port. */
  address: string;
  /** The caller's token (CALLERS), sent as `authorization: Bearer <token>`. */
  token?: string;
  /** Default: plaintext. grpc.credentials.createSsl(...) for TLS / mutual TLS. */
  credentials?: grpc.ChannelCredentials;
  /** Verifications in flight on the stream at most; past it, calls go out as unary calls. Default 1000. */
  maxInFlight?: number;
  /** Back-off before reopening a broken stream: from this (ms), doubling, up to maxBackoffMs. Default 100. */
  minBackoffMs?: number;
  /** Default 5000. */
  maxBackoffMs?: number;
  /** grpc-js channel options. */
  channelOptions?: grpc.ChannelOptions;
}

export interface VerifyOptions {
  requiredScopes?: string[];
  /** Credits this call consumes (0 = none). */
  cost?: number;
  /** Give up after this long (ms) with DEADLINE_EXCEEDED. Default: no deadline. */
  timeoutMs?: number;
}

/** A refusal with a gRPC status code (grpc.status), as a unary VerifyKey call would fail. */
export class VerifyError extends Error {
  constructor(
    readonly code: grpc.status,
    message: string,
  ) {
    super(message);
    this.name = "VerifyError";
  }
}

export class VerifierStats {
  /** Verifications answered over the stream, and as unary calls. */
  streamed = 0;
  unary = 0;
  /** Streams opened, and streams that broke. */
  opened = 0;
  broken = 0;
  /** Calls in flight on a broken stream sent again as unary calls. */
  retried = 0;
  /** Calls sent as unary calls from the start, because the stream was down or full. */
  fellBack = 0;
}

interface Pending {
  request: VerifyKeyRequest;
  resolve(r: VerifyKeyResponse): void;
  reject(e: Error): void;
  timer: NodeJS.Timeout | undefined;
  settled: boolean;
}

const VERIFY_PATH = `/${ApiKeyService.typeName}/${ApiKeyService.method.verifyKey.name}`;
const STREAM_PATH = `/${ApiKeyService.typeName}/${ApiKeyService.method.verifyKeyStream.name}`;
const Client = grpc.makeGenericClientConstructor({}, ApiKeyService.typeName);

const serializeRequest = (m: VerifyKeyRequest) => Buffer.from(toBinary(VerifyKeyRequestSchema, m));
const deserializeResponse = (b: Buffer) => fromBinary(VerifyKeyResponseSchema, b);
const serializeStreamRequest = (m: VerifyKeyStreamRequest) => Buffer.from(toBinary(VerifyKeyStreamRequestSchema, m));
const deserializeStreamResponse = (b: Buffer) => fromBinary(VerifyKeyStreamResponseSchema, b);

type Stream = grpc.ClientDuplexStream<VerifyKeyStreamRequest, VerifyKeyStreamResponse>;

export class VerifierClient {
  readonly stats = new VerifierStats();
  private readonly client: grpc.Client;
  private readonly metadata: grpc.Metadata;
  private readonly maxInFlight: number;
  private readonly minBackoffMs: number;
  private readonly maxBackoffMs: number;
  private stream: Stream | null = null;
  /** In flight on the current stream, by correlation id. */
  private inFlight = new Map<number, Pending>();
  private nextId = 1;
  private backoffMs: number;
  private reopenTimer: NodeJS.Timeout | null = null;
  private closed = false;

  constructor(options: VerifierClientOptions) {
    this.minBackoffMs = options.minBackoffMs ?? 100;
    this.maxBackoffMs = options.maxBackoffMs ?? 5000;
    // The channel reconnects on the same schedule as the stream (grpc-js's own goes up to two minutes, during
    // which every call, unary ones included, fails at once).
    this.client = new Client(options.address, options.credentials ?? grpc.credentials.createInsecure(), {
      "grpc.initial_reconnect_backoff_ms": this.minBackoffMs,
      "grpc.max_reconnect_backoff_ms": this.maxBackoffMs,
      ...options.channelOptions,
    });
    this.metadata = new grpc.Metadata();
    if (options.token !== undefined) this.metadata.set("authorization", `Bearer ${options.token}`);
    this.maxInFlight = options.maxInFlight ?? 1000;
    this.backoffMs = this.minBackoffMs;
    this.open();
  }

  /** VerifyKey: the answer (valid or not, with its code), or a VerifyError for what VerifyKey fails with. */
  verify(key: string, options: VerifyOptions = {}): Promise<VerifyKeyResponse> {
    if (this.closed) return Promise.reject(new VerifyError(grpc.status.CANCELLED, "the client is closed"));
    const request = create(VerifyKeyRequestSchema, { key, requiredScopes: options.requiredScopes ?? [], cost: options.cost ?? 0 });
    return new Promise((resolve, reject) => {
      const pending: Pending = { request, resolve, reject, timer: undefined, settled: false };
      if (options.timeoutMs !== undefined) {
        pending.timer = setTimeout(() => this.settle(pending, new VerifyError(grpc.status.DEADLINE_EXCEEDED, "deadline exceeded")), options.timeoutMs);
      }
      const stream = this.stream;
      if (stream !== null && this.inFlight.size < this.maxInFlight) {
        const id = this.nextId;
        this.nextId = this.nextId === 0xffffffff ? 1 : this.nextId + 1;
        this.inFlight.set(id, pending);
        stream.write(create(VerifyKeyStreamRequestSchema, { correlationId: id, request }));
      } else {
        this.stats.fellBack++;
        this.unary(pending, options.timeoutMs);
      }
    });
  }

  /** Ends the stream and the channel; calls in flight fail with CANCELLED. */
  close(): void {
    this.closed = true;
    if (this.reopenTimer !== null) clearTimeout(this.reopenTimer);
    const stream = this.stream;
    this.stream = null;
    stream?.cancel();
    for (const p of this.inFlight.values()) this.settle(p, new VerifyError(grpc.status.CANCELLED, "the client is closed"));
    this.inFlight.clear();
    this.client.close();
  }

  private open(): void {
    this.reopenTimer = null;
    if (this.closed) return;
    const stream: Stream = this.client.makeBidiStreamRequest(STREAM_PATH, serializeStreamRequest, deserializeStreamResponse, this.metadata);
    this.stream = stream;
    this.stats.opened++;
    const inFlight = this.inFlight;
    stream.on("data", (m: VerifyKeyStreamResponse) => {
      // A working stream: the next break starts the back-off from the beginning.
      this.backoffMs = this.minBackoffMs;
      const pending = inFlight.get(m.correlationId);
      if (pending === undefined) return;
      inFlight.delete(m.correlationId);
      this.stats.streamed++;
      const result = m.result;
      if (result.case === "response") this.settle(pending, null, result.value);
      else this.settle(pending, new VerifyError((result.value?.code ?? grpc.status.UNKNOWN) as grpc.status, result.value?.message ?? "verification failed"));
    });
    stream.on("error", () => this.broke(stream));
    stream.on("end", () => this.broke(stream));
  }

  /** The stream ended or failed: calls on it go unary (when safe), new calls too until it is open again. */
  private broke(stream: Stream): void {
    if (this.stream !== stream) return;
    this.stream = null;
    this.stats.broken++;
    const orphans = this.inFlight;
    this.inFlight = new Map();
    for (const pending of orphans.values()) {
      if (pending.settled) continue;
      if (pending.request.cost > 0) {
        // It may have been counted already: sending it again could consume its credits twice.
        this.settle(pending, new VerifyError(grpc.status.UNAVAILABLE, "the connection broke during a verification with a cost; retry if the credits may be spent again"));
      } else {
        this.stats.retried++;
        this.unary(pending, undefined);
      }
    }
    if (this.closed) return;
    const delay = this.backoffMs * (0.5 + Math.random() / 2);
    this.backoffMs = Math.min(this.backoffMs * 2, this.maxBackoffMs);
    this.reopenTimer = setTimeout(() => this.open(), delay);
    this.reopenTimer.unref();
  }

  private unary(pending: Pending, timeoutMs: number | undefined): void {
    const options: grpc.CallOptions = timeoutMs === undefined ? {} : { deadline: Date.now() + timeoutMs };
    this.client.makeUnaryRequest(VERIFY_PATH, serializeRequest, deserializeResponse, pending.request, this.metadata, options, (err, res) => {
      if (err) this.settle(pending, new VerifyError(err.code, err.details || err.message));
      else {
        this.stats.unary++;
        this.settle(pending, null, res);
      }
    });
  }

  private settle(pending: Pending, err: Error | null, res?: VerifyKeyResponse): void {
    if (pending.settled) return;
    pending.settled = true;
    if (pending.timer !== undefined) clearTimeout(pending.timer);
    if (err !== null) pending.reject(err);
    else pending.resolve(res!);
  }
}
