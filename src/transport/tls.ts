// TLS on the gRPC port, and mutual TLS as a way for callers to authenticate.
// With a client CA, the handshake itself refuses any client without a
// certificate signed by that CA; the certificate's identities (subject CN,
// DNS and URI SANs) are then matched to CALLERS entries by CallerAuth.
// Certificates are read once at start-up: restart (one instance at a time)
// to pick up renewed files.
import { X509Certificate, createPrivateKey } from "node:crypto";
import { readFileSync } from "node:fs";
import type { PeerCertificate } from "node:tls";
import * as grpc from "@grpc/grpc-js";
import { ConfigError } from "../config-error.js";

export interface TlsConfig {
  certFile: string;
  keyFile: string;
  /** When set, client certificates are required and verified against this CA bundle. */
  clientCaFile: string | null;
}

function read(variable: string, path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    throw new ConfigError(`${variable}: cannot read "${path}" (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
  }
}

function parse<T>(variable: string, path: string, what: string, fn: () => T): T {
  try {
    return fn();
  } catch {
    throw new ConfigError(`${variable}: "${path}" is not a PEM ${what}`);
  }
}

/**
 * Server credentials for the gRPC port: insecure without TLS, else TLS with
 * the files checked here (so a wrong path or a key that does not belong to
 * the certificate stops start-up with a message naming the variable).
 */
export function grpcServerCredentials(tls: TlsConfig | null): grpc.ServerCredentials {
  if (tls === null) return grpc.ServerCredentials.createInsecure();
  const cert = read("TLS_CERT_FILE", tls.certFile);
  const key = read("TLS_KEY_FILE", tls.keyFile);
  const x509 = parse("TLS_CERT_FILE", tls.certFile, "certificate", () => new X509Certificate(cert));
  const privateKey = parse("TLS_KEY_FILE", tls.keyFile, "private key", () => createPrivateKey(key));
  if (!x509.checkPrivateKey(privateKey)) throw new ConfigError("TLS_KEY_FILE is not the private key of the certificate in TLS_CERT_FILE");
  let ca: Buffer | null = null;
  if (tls.clientCaFile !== null) {
    const file = tls.clientCaFile;
    ca = read("TLS_CLIENT_CA_FILE", file);
    parse("TLS_CLIENT_CA_FILE", file, "certificate", () => new X509Certificate(ca as Buffer));
  }
  return grpc.ServerCredentials.createSsl(ca, [{ cert_chain: cert, private_key: key }], ca !== null);
}

// "DNS:a.example, URI:spiffe://x/y, IP Address:10.0.0.1"; Node quotes (JSON-style) values that contain a comma or a quote.
const SAN = /(?:^|, )(DNS|URI):("(?:[^"\\]|\\.)*"|[^,]*)/g;

/**
 * What a verified client certificate says its holder is, in CALLERS'
 * `cert_identity` form: `CN=<common name>`, `DNS:<name>`, `URI:<uri>`.
 */
export function certificateIdentities(cert: PeerCertificate): string[] {
  const out: string[] = [];
  const cn: unknown = cert.subject?.CN;
  for (const name of Array.isArray(cn) ? cn : [cn]) if (typeof name === "string" && name !== "") out.push(`CN=${name}`);
  for (const [, kind, raw] of (cert.subjectaltname ?? "").matchAll(SAN)) {
    out.push(`${kind}:${raw.startsWith('"') ? (JSON.parse(raw) as string) : raw}`);
  }
  return out;
}

/** The identities of a gRPC call's client certificate; grpc-js exposes only certificates the handshake verified. */
export function peerIdentities(call: Pick<grpc.ServerUnaryCall<unknown, unknown>, "getAuthContext">): string[] {
  const cert = call.getAuthContext().sslPeerCertificate;
  return cert ? certificateIdentities(cert) : [];
}
