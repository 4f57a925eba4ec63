// Start-up configuration of who may call the service: outside dev mode it
// refuses to start open to anyone, and every mistake in CALLERS or the TLS
// variables stops it with a message naming what is wrong — never the token.
import { describe, expect, it } from "vitest";
import { createHash } from "node:crypto";
import { ConfigError } from "../../src/config-error.js";
import { loadConfig, tokenWeakness } from "../../src/config.js";

const PEPPER = "unit-test-pepper-0123456789";
const TOKEN = "a-caller-token-0123456789-7Hq2Lm9Zx";

function load(env: Record<string, string>, dev = false) {
  return loadConfig({ KEY_PEPPER: PEPPER, ...env }, { dev });
}

function refusal(env: Record<string, string>): string {
  try {
    load(env);
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as Error).message;
  }
  throw new Error("expected loadConfig to refuse");
}

const callers = (...list: unknown[]) => ({ CALLERS: JSON.stringify(list) });
const sha256 = (text: string) => createHash("sha256").update(text).digest();

describe("loadConfig: callers", () => {
  it("refuses to start without callers outside dev mode", () => {
    expect(refusal({})).toMatch(/CALLERS is not set: refusing to start.*ALLOW_UNAUTHENTICATED_CALLERS=true/);
    expect(refusal({ CALLERS: "" })).toMatch(/CALLERS is not set/);
    expect(refusal({ CALLERS: "[]" })).toMatch(/CALLERS is not set/);
  });

  it("starts open only when told to, and in dev mode", () => {
    expect(load({ ALLOW_UNAUTHENTICATED_CALLERS: "true" })).toMatchObject({ callers: [], allowUnauthenticated: true });
    expect(load({}, true)).toMatchObject({ callers: [], allowUnauthenticated: true });
    expect(refusal({ ALLOW_UNAUTHENTICATED_CALLERS: "yes" })).toBe('ALLOW_UNAUTHENTICATED_CALLERS must be true or false, got "yes"');
  });

  it("parses callers with tokens and certificate identities", () => {
    const config = load({
      ...callers(
        { name: "web", token: TOKEN, allow: ["manage", "verify"] },
        { name: "gateway", cert_identity: "CN=gateway", allow: ["verify"] },
      ),
      TLS_CERT_FILE: "/etc/apikeys/server.pem",
      TLS_KEY_FILE: "/etc/apikeys/server.key",
      TLS_CLIENT_CA_FILE: "/etc/apikeys/ca.pem",
    });
    expect(config.callers).toEqual([
      { name: "web", tokenSha256: sha256(TOKEN), allow: ["manage", "verify"] },
      { name: "gateway", certIdentity: "CN=gateway", allow: ["verify"] },
    ]);
    expect(config.allowUnauthenticated).toBe(false);
    expect(config.tls).toEqual({ certFile: "/etc/apikeys/server.pem", keyFile: "/etc/apikeys/server.key", clientCaFile: "/etc/apikeys/ca.pem" });
  });

  it.each([
    ["bad JSON", { CALLERS: "[{name: web}]" }, /^CALLERS must be JSON, e\.g\. \[\{"name":"web"/],
    ["not a list", { CALLERS: '{"name":"web"}' }, /^CALLERS must be a JSON list of callers$/],
    ["an entry that is not an object", callers("web"), /^CALLERS\[0\] must be an object$/],
    ["no name", callers({ token: TOKEN, allow: ["verify"] }), /^CALLERS\[0\]\.name must be 1 to 64 letters/],
    ["a name unfit for audit and metrics", callers({ name: "web app\n", token: TOKEN, allow: ["verify"] }), /^CALLERS\[0\]\.name must be/],
    [
      "duplicate names",
      callers({ name: "web", token: TOKEN, allow: ["verify"] }, { name: "web", token: `${TOKEN}-2`, allow: ["manage"] }),
      /^CALLERS: the name "web" is used twice$/,
    ],
    ["a short token", callers({ name: "web", token: "short", allow: ["verify"] }), /^CALLERS\[0\] \("web"\): the token is weak \(5 characters; at least 32 are needed\)\. Use a random one/],
    ["a token with a space", callers({ name: "web", token: `${TOKEN} x`, allow: ["verify"] }), /the token is weak \(it contains white space\)/],
    ["a token of one kind of character", callers({ name: "web", token: "abcdefghijklmnopqrstuvwxyzabcdefgh", allow: ["verify"] }), /the token is weak \(it uses one kind of character only/],
    ["a token of few characters", callers({ name: "web", token: "ab12ab12ab12ab12ab12ab12ab12ab12", allow: ["verify"] }), /the token is weak \(only 4 different characters; at least 10/],
    ["a token and its digest", callers({ name: "web", token: TOKEN, token_sha256: sha256(TOKEN).toString("hex"), allow: ["verify"] }), /give token or token_sha256, not both/],
    ["a digest that is not SHA-256 hex", callers({ name: "web", token_sha256: "abc", allow: ["verify"] }), /token_sha256 must be the token's SHA-256 as 64 hex digits/],
    [
      "a token and another caller's digest of it",
      callers({ name: "a", token: TOKEN, allow: ["verify"] }, { name: "b", token_sha256: sha256(TOKEN).toString("hex"), allow: ["manage"] }),
      /^CALLERS\[1\] \("b"\): token is the same as an earlier caller's$/,
    ],
    ["unknown organizations", callers({ name: "web", token: TOKEN, allow: ["verify"], organizations: "org_a" }), /organizations must be a non-empty list of organization ids or prefixes ending in "\*"/],
    ["an empty organizations list", callers({ name: "web", token: TOKEN, allow: ["verify"], organizations: [] }), /organizations must be a non-empty list/],
    ["a bare * organization", callers({ name: "web", token: TOKEN, allow: ["verify"], organizations: ["*"] }), /organizations must be a non-empty list/],
    ["a * inside an organization", callers({ name: "web", token: TOKEN, allow: ["verify"], organizations: ["team_*_x"] }), /organizations must be a non-empty list/],
    ["a token that is not a string", callers({ name: "web", token: 1234567890123456789, allow: ["verify"] }), /token must be a string/],
    [
      "duplicate tokens",
      callers({ name: "a", token: TOKEN, allow: ["verify"] }, { name: "b", token: TOKEN, allow: ["manage"] }),
      /^CALLERS\[1\] \("b"\): token is the same as an earlier caller's$/,
    ],
    ["no credentials", callers({ name: "web", allow: ["verify"] }), /^CALLERS\[0\] \("web"\): needs a token \(or its token_sha256\), a cert_identity, or both$/],
    ["unknown allow values", callers({ name: "web", token: TOKEN, allow: ["manage", "root"] }), /^CALLERS\[0\] \("web"\): allow must list one or more of "verify", "manage", "admin"$/],
    ["an empty allow", callers({ name: "web", token: TOKEN, allow: [] }), /allow must list one or more of/],
    ["a misspelt field", callers({ name: "web", token: TOKEN, alow: ["verify"] }), /^CALLERS\[0\]: unknown field "alow"/],
    [
      "a malformed cert_identity",
      { ...callers({ name: "gw", cert_identity: "gateway", allow: ["verify"] }), TLS_CERT_FILE: "c", TLS_KEY_FILE: "k", TLS_CLIENT_CA_FILE: "ca" },
      /cert_identity must be "CN=<common name>", "DNS:<name>" or "URI:<uri>"/,
    ],
    [
      "a cert_identity used twice",
      {
        ...callers({ name: "a", cert_identity: "CN=gw", allow: ["verify"] }, { name: "b", cert_identity: "CN=gw", allow: ["manage"] }),
        TLS_CERT_FILE: "c",
        TLS_KEY_FILE: "k",
        TLS_CLIENT_CA_FILE: "ca",
      },
      /^CALLERS\[1\] \("b"\): cert_identity "CN=gw" is used twice$/,
    ],
    [
      "a cert_identity without mutual TLS",
      { ...callers({ name: "gw", cert_identity: "CN=gw", allow: ["verify"] }), TLS_CERT_FILE: "c", TLS_KEY_FILE: "k" },
      /^CALLERS: "gw" has a cert_identity, which needs mutual TLS: set TLS_CLIENT_CA_FILE/,
    ],
  ])("refuses %s with a clear message that never contains the token", (_what, env, message) => {
    const text = refusal(env);
    expect(text).toMatch(message);
    expect(text).not.toContain(TOKEN);
  });
});

describe("loadConfig: caller tokens, permissions and organizations", () => {
  it("keeps only a token's digest, and takes a configured digest as it is", () => {
    const config = load(
      callers(
        { name: "web", token: TOKEN, allow: ["manage", "admin"], organizations: ["org_a", "team_*"] },
        { name: "gw", token_sha256: sha256("gw-token-Zq81-abcdefghijklmnopqrstuv").toString("hex").toUpperCase(), allow: ["verify"] },
      ),
    );
    expect(config.callers).toEqual([
      { name: "web", tokenSha256: sha256(TOKEN), allow: ["manage", "admin"], organizations: ["org_a", "team_*"] },
      { name: "gw", tokenSha256: sha256("gw-token-Zq81-abcdefghijklmnopqrstuv"), allow: ["verify"] },
    ]);
    expect(JSON.stringify(config)).not.toContain(TOKEN);
  });

  it("accepts what `openssl rand` makes, and refuses what a person would type", () => {
    for (const strong of ["kJ3pQ0v8Xw2zR5tY7uI9oP1aS4dF6gH8jK0lZ2xC4v6=", "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"]) {
      expect(tokenWeakness(strong), strong).toBeNull();
    }
    for (const weak of ["password", "passwordpasswordpasswordpassword", "11111111111111111111111111111111111", "aaaaaaaaaaaaaaaa-bbbbbbbbbbbbbbbbbbbb"]) {
      expect(tokenWeakness(weak), weak).not.toBeNull();
    }
  });
});

describe("loadConfig: dev mode", () => {
  it("listens on loopback only: anything else is refused with a clear message", () => {
    for (const host of ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost", "::ffff:127.0.0.1"]) expect(load({ HOST: host }, true).host, host).toBe(host);
    for (const host of ["0.0.0.0", "::", "10.0.0.5", "192.168.1.10", "example.com", "127.0.0.1.nip.io", "::ffff:10.0.0.1"]) {
      expect(() => load({ HOST: host }, true), host).toThrow(/HOST must be a loopback address in dev mode/);
    }
    // Outside dev mode any address is the operator's choice.
    expect(load({ HOST: "0.0.0.0", ALLOW_UNAUTHENTICATED_CALLERS: "true" }).host).toBe("0.0.0.0");
  });
});

describe("loadConfig: TLS and peppers", () => {
  const base = callers({ name: "web", token: TOKEN, allow: ["verify"] });

  it("is plaintext by default, and TLS with only the server's certificate", () => {
    expect(load(base).tls).toBeNull();
    expect(load({ ...base, TLS_CERT_FILE: "c", TLS_KEY_FILE: "k" }).tls).toEqual({ certFile: "c", keyFile: "k", clientCaFile: null });
  });

  it("refuses half a TLS configuration", () => {
    expect(refusal({ ...base, TLS_CERT_FILE: "c" })).toBe("TLS_CERT_FILE and TLS_KEY_FILE must be set together");
    expect(refusal({ ...base, TLS_KEY_FILE: "k" })).toBe("TLS_CERT_FILE and TLS_KEY_FILE must be set together");
    expect(refusal({ ...base, TLS_CLIENT_CA_FILE: "ca" })).toMatch(/^TLS_CLIENT_CA_FILE needs TLS_CERT_FILE and TLS_KEY_FILE/);
  });

  it("requires a pepper outside dev mode, and checks the previous one", () => {
    expect(() => loadConfig({ ...base }, { dev: false })).toThrow(/KEY_PEPPER is required outside dev mode/);
    expect(load({ ...base, KEY_PEPPER_PREVIOUS: "an-older-pepper-0123456789" }).previousPepper).toBe("an-older-pepper-0123456789");
    expect(load(base).previousPepper).toBeNull();
    expect(refusal({ ...base, KEY_PEPPER_PREVIOUS: "short" })).toBe("KEY_PEPPER_PREVIOUS must be at least 16 characters");
    expect(refusal({ ...base, KEY_PEPPER_PREVIOUS: PEPPER })).toBe("KEY_PEPPER_PREVIOUS must differ from KEY_PEPPER");
  });

  it("runs one server process unless WORKERS says otherwise; never several in dev mode", () => {
    const open = { ALLOW_UNAUTHENTICATED_CALLERS: "true" };
    expect(load(open).workers).toBe(1);
    expect(load({ ...open, WORKERS: "4" }).workers).toBe(4);
    expect(load({ ...open, WORKERS: "auto" }).workers).toBeGreaterThanOrEqual(1);
    expect(refusal({ ...open, WORKERS: "0" })).toMatch(/WORKERS must be "auto" \(one per CPU\) or an integer from 1 to 256, got "0"/);
    expect(refusal({ ...open, WORKERS: "two" })).toMatch(/WORKERS must be/);
    expect(() => load({ WORKERS: "2" }, true)).toThrow(/WORKERS must be 1 in dev mode/);
    expect(load({ WORKERS: "1" }, true).workers).toBe(1);
  });
});

describe("loadConfig: Redis", () => {
  const open = { ALLOW_UNAUTHENTICATED_CALLERS: "true" };
  const SECRET = "s3cr3t/pass@word";
  const access = { db: 0, tls: false, tlsCaFile: null, username: null, password: null };

  it("reaches a standalone Redis by REDIS_URL, with TLS (rediss://) and an ACL user", () => {
    expect(load(open).redis).toEqual({ ...access, cluster: false, nodes: [{ host: "127.0.0.1", port: 6379 }] });
    expect(load({ ...open, REDIS_URL: "redis://redis.internal/2" }).redis).toEqual({
      ...access,
      cluster: false,
      db: 2,
      nodes: [{ host: "redis.internal", port: 6379 }],
    });
    expect(
      load({ ...open, REDIS_URL: `rediss://apikeys:${encodeURIComponent(SECRET)}@[fd00::1]:6380`, REDIS_TLS_CA_FILE: "/etc/redis-ca.pem" }).redis,
    ).toEqual({
      ...access,
      cluster: false,
      nodes: [{ host: "fd00::1", port: 6380 }],
      tls: true,
      tlsCaFile: "/etc/redis-ca.pem",
      username: "apikeys",
      password: SECRET,
    });
    expect(load({ ...open, REDIS_URL: "redis://:only-a-password@h:1" }).redis).toMatchObject({ username: null, password: "only-a-password" });
  });

  it("runs on a cluster when REDIS_CLUSTER_NODES is set, whatever REDIS_URL says", () => {
    expect(load({ ...open, REDIS_URL: "redis://standalone:6379", REDIS_CLUSTER_NODES: " 10.0.0.1:7000, redis-2.internal:7001,[fd00::3]:7002" }).redis).toEqual({
      ...access,
      cluster: true,
      nodes: [
        { host: "10.0.0.1", port: 7000 },
        { host: "redis-2.internal", port: 7001 },
        { host: "fd00::3", port: 7002 },
      ],
    });
    // The first entry as a URL: its scheme and credentials apply to every node.
    expect(load({ ...open, REDIS_CLUSTER_NODES: "rediss://apikeys:pw@n1:6379,n2:6379" }).redis).toEqual({
      ...access,
      cluster: true,
      nodes: [
        { host: "n1", port: 6379 },
        { host: "n2", port: 6379 },
      ],
      tls: true,
      username: "apikeys",
      password: "pw",
    });
  });

  it.each([
    ["a REDIS_URL that is not one", { REDIS_URL: "localhost:6379" }, /^REDIS_URL "localhost:6379": the scheme must be redis:\/\/ or rediss:\/\//],
    ["another scheme", { REDIS_URL: "http://h:1" }, /^REDIS_URL "http:\/\/h:1": the scheme must be redis:\/\/ or rediss:\/\/ \(TLS\)$/],
    ["a port out of range", { REDIS_URL: "redis://h:70000" }, /^REDIS_URL "redis:\/\/h:70000" is not a URL/],
    ["a path that is not a database", { REDIS_URL: "redis://h:1/cache" }, /the path must be a database number$/],
    ["URL options", { REDIS_URL: "redis://h:1/?family=6" }, /options in the URL are not supported$/],
    ["a user without a password", { REDIS_URL: `redis://${SECRET.replace("/", "")}@h:1` }, /^REDIS_URL "redis:\/\/\*\*\*@h:1": a user without a password/],
    ["a CA file without TLS", { REDIS_TLS_CA_FILE: "/ca.pem" }, /^REDIS_TLS_CA_FILE is set but Redis is reached without TLS: use a rediss:\/\/ REDIS_URL$/],
    ["a cluster entry without a port", { REDIS_CLUSTER_NODES: "n1:7000,n2" }, /^REDIS_CLUSTER_NODES entry 2 "n2" is not host:port/],
    ["an empty cluster entry", { REDIS_CLUSTER_NODES: "n1:7000,,n2:7001" }, /^REDIS_CLUSTER_NODES entry 2 "" is not host:port/],
    ["a cluster port out of range", { REDIS_CLUSTER_NODES: "n1:0" }, /^REDIS_CLUSTER_NODES entry 1 "n1:0": the port must be from 1 to 65535$/],
    ["a node listed twice", { REDIS_CLUSTER_NODES: "n1:7000,n1:7000" }, /entry 2 "n1:7000": n1:7000 is listed twice$/],
    ["a URL after the first entry", { REDIS_CLUSTER_NODES: `n1:7000,redis://u:${SECRET}@n2:7001` }, /^REDIS_CLUSTER_NODES entry 2 "redis:\/\/u:\*\*\*@n2:7001": only the first entry may be a URL/],
    ["a cluster database", { REDIS_CLUSTER_NODES: "redis://n1:7000/1" }, /a cluster has database 0 only$/],
    ["a CA file for a plaintext cluster", { REDIS_CLUSTER_NODES: "n1:7000", REDIS_TLS_CA_FILE: "/ca.pem" }, /use a rediss:\/\/ first REDIS_CLUSTER_NODES entry$/],
  ])("refuses %s with a message that never contains the password", (_what, env, message) => {
    const text = refusal({ ...open, ...env });
    expect(text).toMatch(message);
    expect(text).not.toContain("s3cr3t");
  });
});
