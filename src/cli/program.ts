// The `apikeys` command line: create, list, revoke, verify and rotate keys on
// a running service. run() takes its streams as arguments and returns the exit
// code, so that tests can drive it in-process as well as through bin/apikeys.js.
import { createInterface } from "node:readline/promises";
import { type DescMessage, type MessageShape, create, toJson } from "@bufbuild/protobuf";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import type { Client } from "@connectrpc/connect";
import { Command, CommanderError, Option } from "commander";
import {
  type ApiKey,
  ApiKeyService,
  CreateKeyResponseSchema,
  ListKeysResponseSchema,
  RevokeKeyResponseSchema,
  Role,
  RotateKeyResponseSchema,
  VerifyCode,
  VerifyKeyResponseSchema,
} from "../../gen/apikeys/v1/apikeys_pb.js";
import { roleName } from "../keys/policy.js";
import { DEFAULT_URL, connect } from "./client.js";
import { CliError, EXIT, EXIT_CODES_HELP, type ExitCode, formatReport, reportOf } from "./exit-codes.js";
import { printable } from "./printable.js";
import {
  collectList,
  describeKey,
  exactTime,
  parseDuration,
  parseExpiration,
  relativeTime,
  secretBlock,
  status,
  table,
  truncate,
} from "./format.js";

export interface CliIo {
  stdin: NodeJS.ReadableStream & { isTTY?: boolean };
  stdout: { write(text: string): unknown };
  stderr: { write(text: string): unknown };
  now: () => number;
}

interface GlobalOptions {
  url: string;
  token?: string;
  user: string;
  role: string;
  json?: boolean;
}

const ROLES = ["viewer", "member", "admin", "owner"];

const ACTOR_HELP = `
The actor (--user, --role) is the end user on whose behalf the CLI acts. The
service records it in the audit trail and as that user's current role in the
organization, and trusts it because it trusts the caller (--token). It defaults
to user "cli" with role owner, for operators; set APIKEYS_USER and APIKEYS_ROLE
to act as yourself.

${EXIT_CODES_HELP}
`;

export async function run(argv: string[], io: CliIo): Promise<ExitCode> {
  let exitCode: ExitCode = EXIT.OK;
  const program = buildProgram(io, (code) => (exitCode = code));
  try {
    await program.parseAsync(argv, { from: "user" });
    return exitCode;
  } catch (err) {
    // Commander has already printed its message (or the help, which exits 0).
    if (err instanceof CommanderError) return err.exitCode === 0 ? EXIT.OK : EXIT.USAGE;
    const report = reportOf(err);
    if ((program.opts() as GlobalOptions).json) {
      const { exitCode: _, ...error } = report;
      io.stderr.write(`${JSON.stringify({ error })}\n`);
    } else {
      io.stderr.write(formatReport(report));
    }
    return report.exitCode;
  }
}

function buildProgram(io: CliIo, setExitCode: (code: ExitCode) => void): Command {
  const program = new Command("apikeys")
    .description("Manage and verify API keys on a running apikeys service.")
    .addOption(new Option("--url <url>", "service URL: http(s):// for Connect (HTTP port), grpc(s)://host:port for gRPC").env("APIKEYS_URL").default(DEFAULT_URL))
    .addOption(new Option("--token <token>", "caller token, sent as `authorization: Bearer <token>`").env("APIKEYS_TOKEN"))
    .addOption(new Option("--user <id>", "actor: the user the CLI acts for").env("APIKEYS_USER").default("cli"))
    .addOption(new Option("--role <role>", "actor: that user's role").choices(ROLES).env("APIKEYS_ROLE").default("owner"))
    .option("--json", "print the response as JSON (protobuf JSON mapping)")
    .addHelpText("after", ACTOR_HELP)
    .showHelpAfterError("(run with --help for usage)")
    .exitOverride()
    .configureOutput({ writeOut: (s) => io.stdout.write(s), writeErr: (s) => io.stderr.write(s) });

  /** Everything an action needs: the global options, a client, the actor, and output. */
  const context = (cmd: Command) => {
    const opts = cmd.optsWithGlobals<GlobalOptions>();
    return {
      client: (): Client<typeof ApiKeyService> => connect({ url: opts.url, token: opts.token }),
      actor: { userId: opts.user, role: Role[opts.role.toUpperCase() as keyof typeof Role] },
      out: (text: string) => io.stdout.write(text),
      /** In --json mode, prints the message and returns true. */
      json: <D extends DescMessage>(schema: D, message: MessageShape<D>): boolean => {
        if (!opts.json) return false;
        io.stdout.write(`${JSON.stringify(toJson(schema, message), null, 2)}\n`);
        return true;
      },
    };
  };

  program
    .command("create")
    .description("create a key; its secret is printed once")
    .requiredOption("--org <id>", "organization that owns the key")
    .requiredOption("--name <name>", "label shown to users")
    .option("--project <id>", "project inside the organization")
    .option("--scopes <scopes>", "permissions, comma-separated, e.g. documents:read,documents:write (default: full access)", collectList)
    .option("--expires <when>", "a lifetime (30d, 12h) or a time (2027-01-01T00:00:00Z); default: never", parseExpiration)
    .option("--prefix <prefix>", "key prefix, e.g. trv_ak (default: the service's)")
    .action(async (options: { org: string; name: string; project?: string; scopes?: string[]; expires?: ReturnType<typeof parseExpiration>; prefix?: string }, cmd: Command) => {
      const c = context(cmd);
      const res = await c.client().createKey({
        organizationId: options.org,
        projectId: options.project ?? "",
        actor: c.actor,
        name: options.name,
        prefix: options.prefix ?? "",
        scopes: options.scopes ?? [],
        expiration: options.expires ?? { case: undefined },
      });
      if (c.json(CreateKeyResponseSchema, res)) return;
      c.out(`Created ${describeKey(res.key)} in ${printable(options.org)}${expiryNote(res.key, io.now())}.\n`);
      c.out(secretBlock(res.secret));
    });

  program
    .command("list")
    .description("list an organization's keys, newest first (never secrets)")
    .requiredOption("--org <id>", "organization")
    .option("--project <id>", "only keys of this project")
    .option("--show-revoked", "include revoked keys")
    .option("--all-pages", "fetch every page, not only the first")
    .action(async (options: { org: string; project?: string; showRevoked?: boolean; allPages?: boolean }, cmd: Command) => {
      const c = context(cmd);
      const client = c.client();
      const keys: ApiKey[] = [];
      let pageToken = "";
      do {
        const page = await client.listKeys({
          organizationId: options.org,
          projectId: options.project ?? "",
          actor: c.actor,
          showRevoked: options.showRevoked ?? false,
          pageToken,
        });
        keys.push(...page.keys);
        pageToken = page.nextPageToken;
      } while (options.allPages && pageToken !== "");
      if (c.json(ListKeysResponseSchema, create(ListKeysResponseSchema, { keys, nextPageToken: pageToken }))) return;
      if (keys.length === 0) {
        c.out(`No keys in ${printable(options.org)}.\n`);
        return;
      }
      const now = io.now();
      c.out(
        table(
          ["ID", "NAME", "PREVIEW", "CREATED", "CREATED BY", "LAST USED", "STATUS"],
          keys.map((k) => [
            k.id,
            truncate(printable(k.name), 32),
            k.preview,
            relativeTime(k.createTime, now),
            k.createdBy,
            relativeTime(k.lastUsedTime, now),
            status(k, now),
          ]),
        ),
      );
      if (pageToken !== "") io.stderr.write("More keys: run with --all-pages to list them all.\n");
    });

  program
    .command("revoke")
    .description("revoke a key at once, on every instance")
    .argument("<id>", "the key's id, e.g. key_…")
    .requiredOption("--org <id>", "organization that owns the key")
    .option("--reason <text>", "why; recorded on the key and in the audit trail")
    .option("-y, --yes", "do not ask for confirmation")
    .action(async (id: string, options: { org: string; reason?: string; yes?: boolean }, cmd: Command) => {
      const c = context(cmd);
      const client = c.client();
      if (!options.yes) {
        if (!io.stdin.isTTY) {
          throw new CliError("refusing to revoke without --yes: stdin is not a terminal to confirm on", EXIT.USAGE);
        }
        const { key } = await client.getKey({ organizationId: options.org, keyId: id, actor: c.actor });
        if (!(await confirm(io, `Revoke ${describeKey(key)} (${printable(key?.preview ?? "")}) in ${printable(options.org)}? This cannot be undone. [y/N] `))) {
          io.stderr.write("Not revoked.\n");
          setExitCode(EXIT.NOT_CONFIRMED);
          return;
        }
      }
      const res = await client.revokeKey({ organizationId: options.org, keyId: id, actor: c.actor, reason: options.reason ?? "" });
      if (c.json(RevokeKeyResponseSchema, res)) return;
      c.out(`Revoked ${describeKey(res.key)}${res.key?.revokeTime ? ` (${exactTime(res.key.revokeTime)})` : ""}.\n`);
    });

  program
    .command("verify")
    .description("check a key as a gateway would; exit code 0 if valid, 1 if not")
    .argument("<key>", 'the secret, or "-" to read it from stdin (keeps it out of shell history)')
    .option("--scope <scope>", "a scope the call needs; repeat or comma-separate for several", collectList)
    .action(async (key: string, options: { scope?: string[] }, cmd: Command) => {
      const c = context(cmd);
      const secret = key === "-" ? (await readAll(io.stdin)).trim() : key;
      const res = await c.client().verifyKey({ key: secret, requiredScopes: options.scope ?? [] });
      if (!res.valid) setExitCode(EXIT.INVALID_KEY);
      if (c.json(VerifyKeyResponseSchema, res)) return;
      const code = VerifyCode[res.code];
      if (!res.valid) {
        c.out(`not valid: ${code}${res.key ? ` (${describeKey(res.key)} in ${printable(res.key.organizationId)})` : ""}\n`);
        return;
      }
      const p = res.principal;
      c.out(`valid: ${describeKey(res.key)} in ${printable(p?.organizationId ?? "")}${p?.projectId ? `/${printable(p.projectId)}` : ""}\n`);
      c.out(`  acts as ${printable(p?.userId ?? "")} (${p ? roleName(p.role) : "?"}), scopes: ${p && p.scopes.length > 0 ? printable(p.scopes.join(", ")) : "all"}\n`);
      if (res.remainingCredits !== undefined) c.out(`  credits left this month: ${res.remainingCredits}\n`);
      if (res.rateLimit) c.out(`  rate limit: ${res.rateLimit.remaining} of ${res.rateLimit.limit} left\n`);
    });

  program
    .command("rotate")
    .description("issue a new secret for a key; the old one works until the grace period ends")
    .argument("<id>", "the key's id, e.g. key_…")
    .requiredOption("--org <id>", "organization that owns the key")
    .option("--grace <duration>", "how long the old secret keeps working, e.g. 1h (default 0: it stops now)", (v) => parseDuration("--grace", v))
    .action(async (id: string, options: { org: string; grace?: ReturnType<typeof parseDuration> }, cmd: Command) => {
      const c = context(cmd);
      const res = await c.client().rotateKey({ organizationId: options.org, keyId: id, actor: c.actor, gracePeriod: options.grace });
      if (c.json(RotateKeyResponseSchema, res)) return;
      const until = res.key?.previousSecretExpireTime;
      c.out(`Rotated ${describeKey(res.key)}. `);
      c.out(
        until && timestampMs(until) > io.now()
          ? `The previous secret keeps working until ${exactTime(until)} (${relativeTime(until, io.now())}).\n`
          : "The previous secret no longer works.\n",
      );
      c.out(secretBlock(res.secret));
    });

  return program;
}

function expiryNote(key: ApiKey | undefined, now: number): string {
  return key?.expireTime ? `, expires ${exactTime(key.expireTime)} (${relativeTime(key.expireTime, now)})` : ", never expires";
}

/** Asks on stderr, so that stdout stays the command's output. */
async function confirm(io: CliIo, question: string): Promise<boolean> {
  const rl = createInterface({ input: io.stdin, output: io.stderr as NodeJS.WritableStream });
  try {
    return /^y(es)?$/i.test((await rl.question(question)).trim());
  } finally {
    rl.close();
  }
}

async function readAll(stream: NodeJS.ReadableStream): Promise<string> {
  let text = "";
  for await (const chunk of stream) text += chunk.toString();
  return text;
}
