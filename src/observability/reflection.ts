// gRPC server reflection (grpc.reflection.v1 and v1alpha, from @grpc/reflection),
// so grpcurl, grpcui and Postman discover the API without the .proto files.
// The descriptors are the ones compiled into the generated protobuf-es code, so
// reflection always describes exactly what this build serves.
import { type DescFile, create, toBinary } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema, FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";
import type * as grpc from "@grpc/grpc-js";
import { type PackageDefinition, loadFileDescriptorSetFromBuffer, loadSync } from "@grpc/proto-loader";
import { ReflectionService } from "@grpc/reflection";
import { protoPath as healthProtoPath } from "grpc-health-check";

/**
 * Serves reflection for `files` (with everything they import) and for the
 * health service, so `grpcurl … grpc.health.v1.Health/Check` works too.
 */
export function addReflection(server: grpc.Server, files: DescFile[]): void {
  const ordered = withImports(files);
  const set = create(FileDescriptorSetSchema, { file: ordered.map((f) => f.proto) });
  const ours = loadFileDescriptorSetFromBuffer(Buffer.from(toBinary(FileDescriptorSetSchema, set)));
  // proto-loader rebuilds the file descriptors from protobuf.js objects, which
  // merges the files of a package and drops each file's imports
  // (grpc/grpc-node#3034): grpcurl then cannot resolve google.protobuf.Timestamp.
  // Reflection serves what it finds here, so hand it the generated originals.
  const originals = ordered.map((f) => Buffer.from(toBinary(FileDescriptorProtoSchema, f.proto)));
  for (const definition of Object.values(ours)) {
    if ("fileDescriptorProtos" in definition) definition.fileDescriptorProtos = originals;
  }
  // health.proto imports nothing, so proto-loader's version of it is complete.
  const definitions: PackageDefinition = { ...ours, ...loadSync(healthProtoPath) };
  new ReflectionService(definitions).addToServer(server);
}

/** The files and their transitive imports, each once, imports first. */
function withImports(files: DescFile[]): DescFile[] {
  const seen = new Set<DescFile>();
  const ordered: DescFile[] = [];
  const visit = (file: DescFile) => {
    if (seen.has(file)) return;
    seen.add(file);
    for (const dep of file.dependencies) visit(dep);
    ordered.push(file);
  };
  for (const file of files) visit(file);
  return ordered;
}
