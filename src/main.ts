// Entry point: `npm run dev` (--dev), `npm start`, `npm run migrate` (--migrate;
// with --check: exit 0 when the schema is up to date, 3 when migrations are
// pending; with --print: the pending migrations' SQL, applied by nobody).
import { create } from "@bufbuild/protobuf";
import { type App, buildApp } from "./app.js";
import { ConfigError } from "./config-error.js";
import { loadConfig, mysqlUrl } from "./config.js";
import { createLogger } from "./logger.js";
import { isWorker, supervise, workerServing } from "./workers.js";
import { CreateKeyRequestSchema, Role } from "../gen/apikeys/v1/apikeys_pb.js";
import { SchemaBehindError, migrationSql, migrationStatus, runMigrations } from "./store/migrate.js";
import { CONNECT_TIMEOUT_MS } from "./store/mysql-pool.js";

/** `npm run migrate -- --check`'s exit code when migrations are pending. */
const EXIT_MIGRATIONS_PENDING = 3;

async function migrate(url: string, args: Set<string>): Promise<void> {
  if (args.has("--check") || args.has("--print")) {
    const { applied, pending } = await migrationStatus(url, CONNECT_TIMEOUT_MS);
    if (args.has("--print")) {
      for (const file of pending) {
        process.stdout.write(`-- ${file}\n${await migrationSql(file)}\n`);
        process.stdout.write(`INSERT INTO schema_migrations (version, apply_time) VALUES ('${file}', UTC_TIMESTAMP(3));\n\n`);
      }
      return;
    }
    process.stdout.write(`${applied.length} migration(s) applied; ${pending.length === 0 ? "none pending" : `pending: ${pending.join(", ")}`}\n`);
    process.exitCode = pending.length === 0 ? 0 : EXIT_MIGRATIONS_PENDING;
    return;
  }
  const applied = await runMigrations(url, CONNECT_TIMEOUT_MS);
  process.stdout.write(applied.length === 0 ? "no migrations pending\n" : `migrations applied: ${applied.join(", ")}\n`);
}

/** After the grace period, how long the last writes (last-used, credits) and closing pools may take. */
const SHUTDOWN_FLUSH_MS = 5000;

async function printDemo(app: App, httpPort: number, grpcPort: number): Promise<void> {
  const { key, secret } = await app.keys.createKey(
    create(CreateKeyRequestSchema, {
      organizationId: "org_demo",
      actor: { userId: "user_demo", role: Role.OWNER },
      name: "demo key",
      scopes: ["documents:read"],
    }),
    { caller: "dev", organizations: null },
  );
  const host = app.config.host;
  process.stdout.write(
    [
      "",
      "apikeys is running in dev mode (in-memory store: nothing is kept after exit).",
      `  gRPC  ${host}:${grpcPort}   (apikeys.v1.ApiKeyService)`,
      `  HTTP  http://${host}:${httpPort}   (Connect/JSON, gRPC-Web, /healthz, /readyz, /metrics)`,
      "",
      `Demo key (organization org_demo, id ${key?.id}, scope documents:read):`,
      `  ${secret}`,
      "",
      "Verify it:",
      `  curl -s -H 'content-type: application/json' -d '{"key":"${secret}","requiredScopes":["documents:read"]}' http://${host}:${httpPort}/apikeys.v1.ApiKeyService/VerifyKey`,
      "",
      "Create another:",
      `  curl -s -H 'content-type: application/json' -d '{"organizationId":"org_demo","actor":{"userId":"user_demo","role":"ROLE_OWNER"},"name":"my key"}' http://${host}:${httpPort}/apikeys.v1.ApiKeyService/CreateKey`,
      "",
    ].join("\n"),
  );
}

async function main(): Promise<void> {
  const args = new Set(process.argv.slice(2));
  if (args.has("--migrate")) return migrate(mysqlUrl(process.env), args);
  const config = loadConfig(process.env, { dev: args.has("--dev") });
  if (config.workers > 1 && !isWorker()) {
    supervise(config.workers, createLogger(config.logLevel), config.shutdownGraceMs + SHUTDOWN_FLUSH_MS);
    return;
  }
  const app = await buildApp(config);
  const { grpcPort, httpPort } = await app.start();
  app.logger.info({ grpcPort, httpPort, dev: config.dev, host: config.host }, "apikeys listening");
  if (config.dev) await printDemo(app, httpPort, grpcPort);

  let stopping = false;
  const shutdown = (signal: string) => {
    if (stopping) return;
    stopping = true;
    const started = Date.now();
    app.logger.info({ signal, graceMs: config.shutdownGraceMs }, "shutting down");
    // stop() forces the ports closed after the grace period, but the final writes
    // could still hang on a dead database: exit rather than linger half-stopped.
    setTimeout(() => {
      app.logger.error("shutdown did not finish in time; exiting");
      process.exit(1);
    }, config.shutdownGraceMs + SHUTDOWN_FLUSH_MS).unref();
    app.stop().then(
      () => {
        app.logger.info({ durationMs: Date.now() - started }, "stopped");
        process.exit(0);
      },
      (err) => {
        app.logger.error({ err }, "shutdown failed");
        process.exit(1);
      },
    );
  };
  process.on("SIGTERM", () => shutdown("SIGTERM"));
  process.on("SIGINT", () => shutdown("SIGINT"));
  if (isWorker()) workerServing(shutdown);
}

main().catch((err) => {
  if (err instanceof ConfigError) {
    process.stderr.write(`apikeys: configuration error: ${err.message}\n`);
    process.exit(2);
  }
  if (err instanceof SchemaBehindError) {
    process.stderr.write(`apikeys: refusing to start: ${err.message}\n`);
    process.exit(EXIT_MIGRATIONS_PENDING);
  }
  process.stderr.write(`apikeys: failed to start: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
