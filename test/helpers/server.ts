// A real server on free ports (gRPC + HTTP), backed by a fresh MariaDB
// database unless a store is given, with a grpc-js client and Connect clients.
import type { DescService, MessageInitShape, MessageShape } from "@bufbuild/protobuf";
import { create } from "@bufbuild/protobuf";
import { type Client, createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import { ApiKeyService, OrganizationService } from "../../gen/apikeys/v1/apikeys_pb.js";
import { type App, buildApp } from "../../src/app.js";
import { loadConfig } from "../../src/config.js";
import type { Logger } from "../../src/logger.js";
import type { Store } from "../../src/keys/ports.js";
import { serviceDefinition } from "../../src/transport/grpc-server.js";
import { type TestDatabase, freshDatabase } from "./mysql.js";

export const TEST_PEPPER = "test-pepper-0123456789abcdef";

export interface TestServer {
  app: App;
  grpcPort: number;
  httpPort: number;
  db: TestDatabase | null;
  /** Connect protocol (JSON) over HTTP/1.1 on the HTTP port. */
  connect: Client<typeof ApiKeyService>;
  orgs: Client<typeof OrganizationService>;
  /** gRPC via connect-node's gRPC transport (HTTP/2) on the gRPC port. */
  grpcTransportClient: Client<typeof ApiKeyService>;
  /** A plain grpc-js client on the gRPC port. */
  grpc: GrpcClient<typeof ApiKeyService>;
  stop(): Promise<void>;
}

export interface StartOptions {
  env?: Record<string, string>;
  store?: Store;
  now?: () => number;
  /** Share an existing database (several instances); it is not dropped by stop(). */
  databaseUrl?: string;
  /** Make this instance slow to read its Redis subscription (see RedisBroadcastOptions). */
  broadcastDeliveryDelayMs?: number;
  /** Capture the service's logs (the default logger writes to stdout at LOG_LEVEL). */
  logger?: Logger;
}

export async function startServer(options: StartOptions = {}): Promise<TestServer> {
  const db = options.store || options.databaseUrl ? null : await freshDatabase();
  const config = loadConfig(
    {
      KEY_PEPPER: TEST_PEPPER,
      ALLOW_UNAUTHENTICATED_CALLERS: "true",
      GRPC_PORT: "0",
      HTTP_PORT: "0",
      LOG_LEVEL: "silent",
      SHUTDOWN_GRACE_SECONDS: "2",
      MYSQL_URL: options.databaseUrl ?? db?.url ?? "mysql://unused",
      ...options.env,
    },
    { dev: false },
  );
  const app = await buildApp(config, {
    store: options.store,
    now: options.now,
    broadcastDeliveryDelayMs: options.broadcastDeliveryDelayMs,
    logger: options.logger,
  });
  const { grpcPort, httpPort } = await app.start();
  const baseUrl = `http://127.0.0.1:${httpPort}`;
  const token = options.env?.TEST_CALLER_TOKEN;
  const headers = token ? { authorization: `Bearer ${token}` } : undefined;
  const connectTransport = createConnectTransport({
    baseUrl,
    httpVersion: "1.1",
    interceptors: headers ? [(next) => (req) => (req.header.set("authorization", headers.authorization), next(req))] : [],
  });
  const grpcTransport = createGrpcTransport({ baseUrl: `http://127.0.0.1:${grpcPort}` });
  const grpcClient = new GrpcClient(ApiKeyService, `127.0.0.1:${grpcPort}`);
  return {
    app,
    grpcPort,
    httpPort,
    db,
    connect: createClient(ApiKeyService, connectTransport),
    orgs: createClient(OrganizationService, connectTransport),
    grpcTransportClient: createClient(ApiKeyService, grpcTransport),
    grpc: grpcClient,
    async stop() {
      grpcClient.close();
      await app.stop();
      await db?.drop();
    },
  };
}

/** A minimal promise-based grpc-js client for a protobuf-es service. */
export class GrpcClient<S extends DescService> {
  private readonly client: grpc.Client;
  private readonly definition: ReturnType<typeof serviceDefinition>;

  constructor(
    private readonly service: S,
    address: string,
    credentials: grpc.ChannelCredentials = grpc.credentials.createInsecure(),
  ) {
    this.definition = serviceDefinition(service);
    const Ctor = grpc.makeGenericClientConstructor(this.definition as grpc.ServiceDefinition, service.typeName);
    this.client = new Ctor(address, credentials);
  }

  /** Calls a unary method by local name (e.g. "verifyKey"); rejects with a grpc ServiceError. */
  call<M extends keyof S["method"] & string>(
    method: M,
    init: MessageInitShape<S["method"][M]["input"]>,
    metadata: grpc.Metadata = new grpc.Metadata(),
  ): Promise<MessageShape<S["method"][M]["output"]>> {
    const desc = this.service.method[method];
    const def = this.definition[method];
    const req = create(desc.input, init as never);
    return new Promise((resolve, reject) => {
      this.client.makeUnaryRequest(def.path, def.requestSerialize, def.responseDeserialize, req, metadata, (err, res) =>
        err ? reject(err) : resolve(res as never),
      );
    });
  }

  close(): void {
    this.client.close();
  }
}
