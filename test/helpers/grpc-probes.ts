// Clients for what operators' tools call on the gRPC port: health checking
// (as Kubernetes' grpc probe or Envoy would) and server reflection (as grpcurl does).
import { createRequire } from "node:module";
import path from "node:path";
import * as grpc from "@grpc/grpc-js";
import { loadSync } from "@grpc/proto-loader";
import { service as healthService } from "grpc-health-check";

export type ServingStatus = "SERVING" | "NOT_SERVING" | "SERVICE_UNKNOWN" | "UNKNOWN";

export class HealthClient {
  private readonly client: grpc.Client & Record<string, (...args: unknown[]) => unknown>;

  constructor(address: string) {
    const Ctor = grpc.makeGenericClientConstructor(healthService as unknown as grpc.ServiceDefinition, "Health");
    this.client = new Ctor(address, grpc.credentials.createInsecure()) as never;
  }

  check(service: string): Promise<ServingStatus> {
    return new Promise((resolve, reject) => {
      this.client.check({ service }, (err: grpc.ServiceError | null, res: { status: ServingStatus }) => (err ? reject(err) : resolve(res.status)));
    });
  }

  /** Opens a Watch stream; `statuses` fills as the server reports, `ended` settles when the stream ends. */
  watch(service: string): { statuses: ServingStatus[]; ended: Promise<grpc.StatusObject>; cancel(): void } {
    const call = this.client.watch({ service }) as grpc.ClientReadableStream<{ status: ServingStatus }>;
    const statuses: ServingStatus[] = [];
    call.on("data", (m: { status: ServingStatus }) => statuses.push(m.status));
    call.on("error", () => {}); // the status event below reports it
    const ended = new Promise<grpc.StatusObject>((resolve) => call.on("status", resolve));
    return { statuses, ended, cancel: () => call.cancel() };
  }

  close(): void {
    this.client.close();
  }
}

const reflectionProto = path.resolve(path.dirname(createRequire(import.meta.url).resolve("@grpc/reflection")), "../proto");

interface ReflectionResponse {
  listServicesResponse?: { service: { name: string }[] };
  fileDescriptorResponse?: { fileDescriptorProto: Buffer[] };
  errorResponse?: { errorCode: number; errorMessage: string };
}

/** grpc.reflection.v1.ServerReflection: one request per stream, as grpcurl's simplest use. */
export class ReflectionClient {
  private readonly client: grpc.Client & Record<string, (...args: unknown[]) => unknown>;

  constructor(address: string) {
    const pkg = grpc.loadPackageDefinition(loadSync("grpc/reflection/v1/reflection.proto", { includeDirs: [reflectionProto] }));
    const Ctor = (pkg.grpc as grpc.GrpcObject).reflection as grpc.GrpcObject;
    const Service = (Ctor.v1 as grpc.GrpcObject).ServerReflection as grpc.ServiceClientConstructor;
    this.client = new Service(address, grpc.credentials.createInsecure()) as never;
  }

  async listServices(): Promise<string[]> {
    const res = await this.ask({ listServices: "*" });
    return res.listServicesResponse!.service.map((s) => s.name);
  }

  /** The serialized FileDescriptorProtos of the file declaring `symbol`, and of its imports. */
  async fileContainingSymbol(symbol: string): Promise<ReflectionResponse> {
    return this.ask({ fileContainingSymbol: symbol });
  }

  close(): void {
    this.client.close();
  }

  private ask(request: object): Promise<ReflectionResponse> {
    const call = this.client.serverReflectionInfo() as grpc.ClientDuplexStream<object, ReflectionResponse>;
    return new Promise((resolve, reject) => {
      call.once("data", (res: ReflectionResponse) => {
        resolve(res);
        call.end();
      });
      call.once("error", reject);
      call.write(request);
    });
  }
}
