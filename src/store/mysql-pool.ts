// Bounded access to a mysql2 pool, shared by everything that talks to MySQL.
// mysql2 sets no statement timeout and no limit on waiting for a pooled
// connection, so a database that accepts connections but stops answering
// would hang calls for good; here every statement and every wait is bounded,
// and failures to reach the database become UNAVAILABLE.
import mysql from "mysql2/promise";
import type { PoolStats } from "../keys/ports.js";
import type { ExecuteValues, FieldPacket, Pool, PoolConnection, QueryResult, QueryValues, ResultSetHeader } from "mysql2/promise";
import { unavailable } from "../keys/errors.js";

/** A dead database must fail a call quickly, not hang it. */
export const CONNECT_TIMEOUT_MS = 2000;
/**
 * The longest one statement, or the wait for a pooled connection, may take. A
 * database that accepts connections but stops answering would otherwise hang
 * calls for good: mysql2 sets no query timeout and no pool wait limit.
 */
export const QUERY_TIMEOUT_MS = 5000;
/** InnoDB may pick a transaction as a deadlock victim; it was rolled back whole, so it can simply run again. */
const TRANSACTION_ATTEMPTS = 3;

/**
 * Errors that say the database cannot be reached or cannot answer right now,
 * rather than that the request was wrong. mysql2 also flags every error that
 * broke a connection as fatal.
 */
const UNAVAILABLE_CODES = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "ETIMEDOUT",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "ENOTFOUND",
  "EAI_AGAIN",
  "EPIPE",
  "PROTOCOL_CONNECTION_LOST",
  "PROTOCOL_SEQUENCE_TIMEOUT",
  "ER_CON_COUNT_ERROR",
  "ER_SERVER_SHUTDOWN",
  "ER_LOCK_WAIT_TIMEOUT",
  "ER_LOCK_DEADLOCK",
  "ER_QUERY_INTERRUPTED",
]);

/**
 * Sees every statement the service sends to MySQL, before it is sent: the
 * SQL as written (placeholders and all) and its values, and the session it
 * runs on (transactions are the statements between START TRANSACTION and
 * COMMIT or ROLLBACK of one session). For tests (test/helpers/statements.ts);
 * null, the default, costs one comparison per statement.
 */
export type StatementHook = (session: object, sql: string, values: readonly unknown[] | undefined) => void;

let statementHook: StatementHook | null = null;

/** Installs (or with null removes) the process's StatementHook. */
export function recordStatements(hook: StatementHook | null): void {
  statementHook = hook;
}

/** A pooled connection whose every statement fails after QUERY_TIMEOUT_MS. */
export class TimedConnection {
  /**
   * A statement timed out, or a rollback failed: the connection may be stuck
   * mid-reply for good (mysql2 would queue every later statement behind the
   * late one), so it is destroyed rather than returned to the pool.
   */
  broken = false;

  /** @param released told once, when the connection goes back to the pool or is destroyed */
  constructor(
    private readonly conn: PoolConnection,
    private readonly released: () => void = () => {},
  ) {}

  query<T extends QueryResult = ResultSetHeader>(sql: string, values?: QueryValues): Promise<[T, FieldPacket[]]> {
    if (statementHook !== null) statementHook(this.conn, sql, values as unknown[] | undefined);
    return this.send<T>(sql, values);
  }

  /** Sends without telling the StatementHook: statements it was told of one by one, joined. */
  send<T extends QueryResult = ResultSetHeader>(sql: string, values?: QueryValues): Promise<[T, FieldPacket[]]> {
    return this.timed(this.conn.query<T>({ sql, timeout: QUERY_TIMEOUT_MS }, values));
  }

  /** Tells the StatementHook of a statement sent later (queued in a transaction). */
  record(sql: string, values: QueryValues | undefined): void {
    if (statementHook !== null) statementHook(this.conn, sql, values as unknown[] | undefined);
  }

  /**
   * A prepared statement (parsed once per connection). mysql2 bounds the
   * EXECUTE with the timeout option but not the PREPARE that comes first on
   * each connection, which on a database that stopped answering never ends
   * (the MySQL fault test caught a VerifyKey waiting 18 s on one): the bound
   * is kept here over both (so mysql2's own timer is not asked for too), and a
   * statement that overran it breaks its connection as a query timeout does.
   */
  execute<T extends QueryResult>(sql: string, values: ExecuteValues): Promise<[T, FieldPacket[]]> {
    if (statementHook !== null) statementHook(this.conn, sql, values as unknown[]);
    const statement = this.conn.execute<T>({ sql }, values);
    return this.timed(
      withinDeadline(
        statement,
        () => Object.assign(new Error("Prepared statement timeout"), { code: "PROTOCOL_SEQUENCE_TIMEOUT", fatal: true }),
        // Its late end, if any, is nobody's business any more.
        () => statement.catch(() => {}),
      ),
    );
  }

  /** Values escaped into SQL exactly as `query` does it (the pool's time zone and charset). */
  format(sql: string, values: QueryValues): string {
    return this.conn.format(sql, values as never);
  }

  release(): void {
    if (this.broken) this.conn.destroy();
    else this.conn.release();
    this.released();
  }

  private async timed<R>(statement: Promise<R>): Promise<R> {
    try {
      return await statement;
    } catch (err) {
      if (errorCode(err) === "PROTOCOL_SEQUENCE_TIMEOUT") this.broken = true;
      throw err;
    }
  }
}

/**
 * `work`'s result, or `overrun()`'s error once QUERY_TIMEOUT_MS have passed;
 * then `abandon` is told, so what `work` brings later is not lost or leaked.
 */
function withinDeadline<T>(work: Promise<T>, overrun: () => Error, abandon: () => void): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      abandon();
      reject(overrun());
    }, QUERY_TIMEOUT_MS);
  });
  return Promise.race([work, deadline]).finally(() => clearTimeout(timer));
}

/** What both a single statement and a transaction run on. */
export type Queryable = Pick<TimedConnection, "query">;

/**
 * A transaction's statements. Statements are queued with `later` and travel
 * with the next `query`, or with the COMMIT, as one multi-statement round
 * trip, in order: a transaction of six statements costs one or two round trips
 * instead of eight. A queued statement's result is in its slot once its batch
 * was sent. A queued statement that fails fails the call that sent it, and the
 * whole transaction is rolled back.
 */
export interface Transaction extends Queryable {
  later<T extends QueryResult = ResultSetHeader>(sql: string, values?: QueryValues): Slot<T>;
  /** Sends what is queued, without COMMIT. */
  send(): Promise<void>;
  /** Sends what is queued and COMMIT (the transaction's end; without it, COMMIT follows the work). */
  commit(): Promise<void>;
}

/** Where a queued statement's result lands when its batch has been sent. */
export interface Slot<T> {
  result?: T;
}

/** How a transaction sees rows others change (the session's default is REPEATABLE READ). */
export interface TransactionOptions {
  /**
   * READ COMMITTED: locking reads of rows that do not exist take no gap locks,
   * so transactions that lock rows they may be about to insert do not deadlock
   * each other over the gap between them. Only while pipelining (vtgate does
   * not take SET TRANSACTION): without, such deadlocks are retried.
   */
  readCommitted?: boolean;
  /**
   * Statements run on their own (autocommitted) before the transaction starts,
   * in the same round trip when pipelining: the lookup rows of another shard
   * (see key_lookup in migrations/003_sharding.sql).
   */
  before?: readonly [sql: string, values: QueryValues][];
}

class PipelinedTransaction implements Transaction {
  private pending: string[] = [];
  private slots: (Slot<unknown> | undefined)[] = [];
  committed = false;

  constructor(
    private readonly conn: TimedConnection,
    options: TransactionOptions,
    /** False: every statement is its own round trip (vtgate takes no multi-statement queries). */
    private readonly pipelining: boolean,
  ) {
    for (const [sql, values] of options.before ?? []) this.later(sql, values);
    if (options.readCommitted && pipelining) this.later("SET TRANSACTION ISOLATION LEVEL READ COMMITTED");
    this.later("START TRANSACTION");
  }

  later<T extends QueryResult = ResultSetHeader>(sql: string, values?: QueryValues): Slot<T> {
    if (this.committed) throw new Error("the transaction has been committed");
    const slot: Slot<T> = {};
    this.conn.record(sql, values);
    this.pending.push(values === undefined ? sql : this.conn.format(sql, values));
    this.slots.push(slot as Slot<unknown>);
    return slot;
  }

  async query<T extends QueryResult = ResultSetHeader>(sql: string, values?: QueryValues): Promise<[T, FieldPacket[]]> {
    if (this.pending.length === 0) return this.conn.query<T>(sql, values);
    this.later(sql, values);
    return this.flush<T>();
  }

  /** Sends what is queued (the statements' results land in their slots). */
  async send(): Promise<void> {
    if (this.pending.length > 0) await this.flush();
  }

  async commit(): Promise<void> {
    if (this.committed) return;
    this.later("COMMIT");
    this.committed = true;
    await this.flush();
  }

  /** Sends every queued statement in one round trip; the last one's result. */
  private async flush<T extends QueryResult>(): Promise<[T, FieldPacket[]]> {
    const batch = this.pending;
    const slots = this.slots;
    this.pending = [];
    this.slots = [];
    if (batch.length === 1 || !this.pipelining) {
      let answer: [T, FieldPacket[]] | undefined;
      for (let i = 0; i < batch.length; i++) {
        answer = await this.conn.send<T>(batch[i]);
        if (slots[i]) slots[i]!.result = answer[0];
      }
      return answer!;
    }
    const [results, fields] = await this.conn.send<QueryResult[] & T>(batch.join(";\n"));
    for (let i = 0; i < slots.length; i++) if (slots[i]) slots[i]!.result = results[i];
    const last = batch.length - 1;
    return [results[last] as T, (fields as unknown as FieldPacket[][])[last]];
  }
}

/** A pool with the options every user of it needs: UTC times, the schema's collation, exact big numbers. */
/**
 * Every session's sql_mode, set by the pool on each new connection: values
 * reach SQL escaped on the client (mysql2 formats `query` values itself, and
 * transactions send formatted batches), which is safe only while backslash is
 * an escape character. A server whose default sql_mode has
 * NO_BACKSLASH_ESCAPES (or ANSI_QUOTES) would let a name such as
 * `\'; UPDATE …` end its string and run statements of its own; so the
 * service never relies on the server's default. The rest is the usual strict
 * default of MySQL and MariaDB.
 */
export const SESSION_SQL_MODE = "STRICT_TRANS_TABLES,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION";

/** The callback-style connection mysql2's pool hands to its "connection" listeners. */
interface NewConnection {
  query(sql: string, callback: (err: Error | null) => void): void;
  destroy(): void;
}

export function createPool(url: string, connectionLimit: number, pipelining = true): Pool {
  const pool = mysql.createPool({
    uri: url,
    connectionLimit,
    connectTimeout: CONNECT_TIMEOUT_MS,
    timezone: "Z",
    // The tables' collation: values compared with columns (also in derived tables) keep their indexes usable.
    charset: "UTF8MB4_BIN",
    supportBigNumbers: true,
    bigNumberStrings: true,
    // MySQL returns JSON columns parsed, MariaDB as text; this makes both text.
    jsonStrings: true,
    // Transactions send their statements in batches (see Transaction). Every
    // value reaches SQL through placeholders, never by concatenation, so this
    // widens nothing an attacker controls.
    multipleStatements: pipelining,
    // No stack capture per statement (it was 8% of a CreateKey's CPU); errors
    // keep the driver's own stack.
    trace: false,
  });
  // Queued on the connection before the pool hands it out, so it is the session's first statement. A
  // connection that cannot take it is dropped: its first user fails (UNAVAILABLE), and never runs unsafe.
  pool.on("connection", (connection) => {
    const conn = connection as unknown as NewConnection;
    conn.query(`SET SESSION sql_mode = '${SESSION_SQL_MODE}'`, (err) => {
      if (err) conn.destroy();
    });
  });
  return pool;
}

/** Why a call that waited QUERY_TIMEOUT_MS for a connection gives up (databaseUnavailable says yes to it). */
export function noConnectionInTime(): Error {
  return Object.assign(new Error("no database connection became free in time"), { code: "ETIMEDOUT" });
}

export class TimedPool {
  /** Transactions InnoDB rolled back as a deadlock's victim (each ran again, up to TRANSACTION_ATTEMPTS). */
  deadlocks = 0;
  /** Transactions committed, since start (a read-your-writes fence for replica reads: see MySqlStore). */
  commits = 0;

  /**
   * @param pipelining Send a transaction's statements in batches, as
   * multi-statement queries (one round trip for most transactions). Off for
   * vtgate, which takes one statement per query (MYSQL_PIPELINING=false).
   */
  /**
   * Pool usage for metrics, counted here from this class's own acquires and
   * the pool's public events: mysql2 has no API for it (its queues are private).
   */
  private open = 0;
  private inUse = 0;
  private waiting = 0;

  constructor(
    readonly pool: Pool,
    readonly pipelining = true,
  ) {
    pool.on("connection", (conn) => {
      this.open++;
      // Closed by the server, by an error, by destroy() or by the pool's idle timeout: the socket closes in every case.
      (conn as unknown as { stream: NodeJS.EventEmitter }).stream.once("close", () => this.open--);
    });
  }

  /** Connections in use and idle, acquires waiting for one, the pool's limit, deadlocks so far. */
  stats(): PoolStats {
    return {
      inUse: this.inUse,
      idle: Math.max(0, this.open - this.inUse),
      waiting: this.waiting,
      max: this.pool.pool.config.connectionLimit ?? 10,
      deadlocks: this.deadlocks,
    };
  }

  /**
   * A connection from the pool, waiting at most QUERY_TIMEOUT_MS: when every
   * connection is stuck, or the database cannot be reached, mysql2 alone would
   * queue the call for good.
   */
  async acquire(): Promise<TimedConnection> {
    const pending = this.pool.getConnection();
    this.waiting++;
    let conn: PoolConnection;
    try {
      conn = await withinDeadline(
        pending,
        noConnectionInTime,
        // A connection that turns up after the wait was given up goes straight back.
        () =>
          pending.then(
            (late) => late.release(),
            () => {},
          ),
      );
    } finally {
      this.waiting--;
    }
    this.inUse++;
    return new TimedConnection(conn, () => this.inUse--);
  }

  /** Runs statements outside a transaction on one connection. */
  async run<T>(work: (db: TimedConnection) => Promise<T>): Promise<T> {
    const db = await this.acquire();
    try {
      return await work(db);
    } finally {
      db.release();
    }
  }

  /**
   * Runs work in one transaction on one connection, again if InnoDB chose it
   * as a deadlock victim. A connection that cannot even roll back is broken
   * and is dropped rather than returned to the pool.
   */
  async transaction<T>(work: (tx: Transaction) => Promise<T>, options: TransactionOptions = {}): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      const conn = await this.acquire();
      try {
        const tx = new PipelinedTransaction(conn, options, this.pipelining);
        const result = await work(tx);
        await tx.commit();
        this.commits++;
        return result;
      } catch (err) {
        // A broken connection is not asked to roll back (that would wait behind the stuck
        // statement): destroying it ends the transaction on the server.
        if (!conn.broken) {
          await conn.query("ROLLBACK").catch(() => {
            conn.broken = true;
          });
        }
        const deadlock = errorCode(err) === "ER_LOCK_DEADLOCK";
        // Two instances made the same page position (see positions.ts): run again, with new ones.
        if (!deadlock && !duplicatePrimaryKey(err)) throw err;
        if (deadlock) this.deadlocks++;
        if (attempt === TRANSACTION_ATTEMPTS) throw err;
      } finally {
        conn.release();
      }
    }
  }

  end(): Promise<void> {
    return this.pool.end();
  }
}

/** Runs a store call, turning a failure to reach the database into UNAVAILABLE. */
export async function guard<T>(work: () => Promise<T>): Promise<T> {
  try {
    return await work();
  } catch (err) {
    if (databaseUnavailable(err)) throw unavailable("database", err);
    throw err;
  }
}

/** Does the error say the database could not answer, rather than that the statement was refused? */
export function databaseUnavailable(err: unknown): boolean {
  return (err as { fatal?: unknown })?.fatal === true || UNAVAILABLE_CODES.has(errorCode(err) ?? "");
}

/** A duplicate in a table's primary key (MariaDB: `for key 'PRIMARY'`, MySQL 8: `for key 'api_keys.PRIMARY'`). */
export function duplicatePrimaryKey(err: unknown): boolean {
  return errorCode(err) === "ER_DUP_ENTRY" && /for key '(?:\w+\.)?PRIMARY'/.test(String((err as Error).message));
}

export function errorCode(err: unknown): string | undefined {
  const code = (err as { code?: unknown })?.code;
  return typeof code === "string" ? code : undefined;
}
