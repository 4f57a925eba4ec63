// Mutual TLS on the gRPC port: callers identified by their client certificate
// (subject CN or a SAN, matched to CALLERS' cert_identity), certificates from
// an unknown CA or none at all refused in the handshake, and a bearer token
// still honoured when one is sent. Certificates are minted here with openssl.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ApiKeyService, OrganizationService, Role, VerifyCode } from "../../gen/apikeys/v1/apikeys_pb.js";
import { buildApp } from "../../src/app.js";
import { ConfigError } from "../../src/config-error.js";
import { loadConfig } from "../../src/config.js";
import { certificateIdentities } from "../../src/transport/tls.js";
import { GrpcClient, TEST_PEPPER, type TestServer, startServer } from "../helpers/server.js";

const WEB_TOKEN = "web-token-3e8f1d2c9b7a-7Hq2Lm9Zx";
const owner = { userId: "u_owner", role: Role.OWNER };

/** A throwaway PKI in a temp dir: two CAs, a server certificate and client certificates. */
class Pki {
  readonly dir = mkdtempSync(join(tmpdir(), "apikeys-mtls-"));

  path(name: string): string {
    return join(this.dir, name);
  }

  read(name: string): Buffer {
    return readFileSync(this.path(name));
  }

  private openssl(...args: string[]): void {
    execFileSync("openssl", args, { stdio: "pipe" });
  }

  ca(name: string): void {
    this.openssl(
      "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
      "-keyout", this.path(`${name}.key`), "-out", this.path(`${name}.pem`), "-days", "1", "-subj", `/CN=${name}`,
      "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign",
    );
  }

  /** A certificate for `subject` signed by `ca`, with the given subjectAltName (e.g. "DNS:x,URI:y"). */
  leaf(name: string, ca: string, subject: string, san?: string): void {
    this.openssl(
      "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
      "-keyout", this.path(`${name}.key`), "-out", this.path(`${name}.csr`), "-subj", subject,
    );
    const ext = this.path(`${name}.ext`);
    writeFileSync(ext, san ? `subjectAltName=${san}\n` : "basicConstraints=CA:FALSE\n");
    this.openssl(
      "x509", "-req", "-in", this.path(`${name}.csr`), "-CA", this.path(`${ca}.pem`), "-CAkey", this.path(`${ca}.key`),
      "-CAcreateserial", "-out", this.path(`${name}.pem`), "-days", "1", "-extfile", ext,
    );
  }

  credentials(client: string | null, ca = "ca"): grpc.ChannelCredentials {
    return client === null
      ? grpc.credentials.createSsl(this.read(`${ca}.pem`))
      : grpc.credentials.createSsl(this.read(`${ca}.pem`), this.read(`${client}.key`), this.read(`${client}.pem`));
  }

  remove(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }
}

function bearer(token: string): grpc.Metadata {
  const md = new grpc.Metadata();
  md.set("authorization", `Bearer ${token}`);
  return md;
}

async function statusOf(p: Promise<unknown>): Promise<{ code: number; details: string }> {
  try {
    await p;
  } catch (err) {
    const e = err as grpc.ServiceError;
    return { code: e.code, details: e.details };
  }
  return { code: grpc.status.OK, details: "" };
}

describe("mutual TLS on the gRPC port", () => {
  const pki = new Pki();
  let s: TestServer;
  const clients: GrpcClient<typeof ApiKeyService>[] = [];
  const keysAs = (client: string | null, ca = "ca") => {
    const c = new GrpcClient(ApiKeyService, `localhost:${s.grpcPort}`, pki.credentials(client, ca));
    clients.push(c);
    return c;
  };

  beforeAll(async () => {
    pki.ca("ca");
    pki.ca("rogue-ca");
    pki.leaf("server", "ca", "/CN=apikeys", "DNS:localhost,IP:127.0.0.1");
    pki.leaf("gateway", "ca", "/O=Example/CN=gateway");
    pki.leaf("web", "ca", "/CN=some-host-name", "DNS:web.internal,URI:spiffe://example.test/web");
    pki.leaf("stranger", "ca", "/CN=stranger");
    pki.leaf("impostor", "rogue-ca", "/CN=gateway");
    s = await startServer({
      env: {
        ALLOW_UNAUTHENTICATED_CALLERS: "false",
        CALLERS: JSON.stringify([
          { name: "gateway", cert_identity: "CN=gateway", allow: ["verify"] },
          { name: "web", cert_identity: "URI:spiffe://example.test/web", token: WEB_TOKEN, allow: ["manage", "verify", "admin"] },
        ]),
        TLS_CERT_FILE: pki.path("server.pem"),
        TLS_KEY_FILE: pki.path("server.key"),
        TLS_CLIENT_CA_FILE: pki.path("ca.pem"),
      },
    });
  });
  afterAll(async () => {
    for (const c of clients) c.close();
    await s?.stop();
    pki.remove();
  });

  it("identifies a caller by its certificate's subject CN, with that caller's rights", async () => {
    const gateway = keysAs("gateway");
    expect((await gateway.call("verifyKey", { key: "sk_notakey" })).code).toBe(VerifyCode.NOT_FOUND);
    const denied = await statusOf(gateway.call("createKey", { organizationId: "org_tls", actor: owner }));
    expect(denied).toEqual({ code: grpc.status.PERMISSION_DENIED, details: 'caller "gateway" is not allowed to manage keys' });
  });

  it("identifies a caller by a URI SAN; its keys verify for the CN-identified gateway", async () => {
    const web = keysAs("web");
    const created = await web.call("createKey", { organizationId: "org_tls", actor: owner, name: "via mtls" });
    expect((await keysAs("gateway").call("verifyKey", { key: created.secret })).code).toBe(VerifyCode.VALID);
    const orgs = new GrpcClient(OrganizationService, `localhost:${s.grpcPort}`, pki.credentials("web"));
    const audit = await orgs.call("listAuditEvents", { organizationId: "org_tls", actor: owner });
    orgs.close();
    expect(audit.events.map((e) => e.caller)).toEqual(["web"]);
  });

  it("refuses a certificate from the trusted CA that is no configured caller, naming its identities", async () => {
    const res = await statusOf(keysAs("stranger").call("verifyKey", { key: "sk_notakey" }));
    expect(res).toEqual({ code: grpc.status.UNAUTHENTICATED, details: "no caller is configured for the client certificate (CN=stranger)" });
  });

  it("still honours a bearer token, which wins over the certificate", async () => {
    expect((await keysAs("stranger").call("createKey", { organizationId: "org_tls", actor: owner }, bearer(WEB_TOKEN))).secret).not.toBe("");
    // A wrong token is refused even with a good certificate: a token that is sent must be right.
    const res = await statusOf(keysAs("web").call("verifyKey", { key: "sk_notakey" }, bearer("not-the-token-at-all")));
    expect(res.code).toBe(grpc.status.UNAUTHENTICATED);
  });

  it("refuses in the handshake: no client certificate, one from another CA, or no TLS at all", async () => {
    for (const client of [keysAs(null), keysAs("impostor"), new GrpcClient(ApiKeyService, `localhost:${s.grpcPort}`)]) {
      clients.push(client);
      const res = await statusOf(client.call("verifyKey", { key: "sk_notakey" }, bearer(WEB_TOKEN)));
      expect(res.code).toBe(grpc.status.UNAVAILABLE);
    }
  });

  it("reads identities from a certificate as CALLERS names them", () => {
    const cert = { subject: { CN: ["a", "b"] }, subjectaltname: 'DNS:x.test, IP Address:10.0.0.1, URI:spiffe://t/w, DNS:"we,ird"' };
    expect(certificateIdentities(cert as never)).toEqual(["CN=a", "CN=b", "DNS:x.test", "URI:spiffe://t/w", "DNS:we,ird"]);
  });

  it("refuses to start with a key that is not the certificate's, or a file it cannot read", async () => {
    const env = {
      KEY_PEPPER: TEST_PEPPER,
      ALLOW_UNAUTHENTICATED_CALLERS: "true",
      TLS_CERT_FILE: pki.path("server.pem"),
      TLS_KEY_FILE: pki.path("gateway.key"),
    };
    const store = s.app.store;
    await expect(buildApp(loadConfig(env, { dev: false }), { store })).rejects.toThrow(
      new ConfigError("TLS_KEY_FILE is not the private key of the certificate in TLS_CERT_FILE"),
    );
    const missing = { ...env, TLS_KEY_FILE: pki.path("server.key"), TLS_CLIENT_CA_FILE: pki.path("nope.pem") };
    await expect(buildApp(loadConfig(missing, { dev: false }), { store })).rejects.toThrow(/^TLS_CLIENT_CA_FILE: cannot read ".*nope\.pem" \(ENOENT\)$/);
    const notPem = { ...env, TLS_KEY_FILE: pki.path("server.key"), TLS_CLIENT_CA_FILE: pki.path("server.ext") };
    await expect(buildApp(loadConfig(notPem, { dev: false }), { store })).rejects.toThrow(/^TLS_CLIENT_CA_FILE: ".*server\.ext" is not a PEM certificate$/);
  });
});
