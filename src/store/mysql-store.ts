// The MySQL/MariaDB store. All SQL of the service lives here, in
// keys-table.ts and in the migrations. Times are DATETIME(3) holding UTC; the
// pool's timezone "Z" makes mysql2 read and write them as UTC, so epoch
// milliseconds survive exactly.
//
// Every statement names the organization it is about (the sharding key under
// Vitess: see docs/vitess.md), and every transaction is about one
// organization; the only statements keyed otherwise are those on key_lookup,
// keyed by hash. test/integration/statement-shards.test.ts checks both.
import type { Pool, ResultSetHeader, RowDataPacket } from "mysql2/promise";
import type { Role } from "../../gen/apikeys/v1/apikeys_pb.js";
import {
  type AuditRecord,
  type KeyRecord,
  type MemberRecord,
  type OrganizationRecord,
  type VerifyRecord,
  normalizeLimits,
} from "../keys/records.js";
import { KEY_INSERT_COLUMNS, KEY_SELECT, type KeyRow, insertValues, limitValues, toKey } from "./keys-table.js";
import { CreateBatcher } from "./create-batcher.js";
import { nextPosition } from "./positions.js";
import { SchemaBehindError, appliedVersions, pendingMigrations, runMigrations } from "./migrate.js";
import {
  CONNECT_TIMEOUT_MS,
  type Queryable,
  type Slot,
  type TimedConnection,
  TimedPool,
  type Transaction,
  createPool,
  duplicatePrimaryKey,
  errorCode,
  guard,
} from "./mysql-pool.js";
import type {
  Announcement,
  AuditQuery,
  ChangedKeys,
  CreatedKey,
  CreditLedger,
  Invalidation,
  CreditUsage,
  ListKeysQuery,
  NewKey,
  OutboxEntry,
  OutboxRef,
  PoolStats,
  Page,
  RemoveMemberCommand,
  RevokeKeyCommand,
  RevokeKeysCommand,
  RotateKeyCommand,
  SetApiAccessCommand,
  SetMemberRoleCommand,
  Store,
  UpdateKeyCommand,
} from "../keys/ports.js";
import { memberOutboxId } from "../keys/ports.js";
import { unchangedByRevoke } from "./unchanged-by-revoke.js";

/** How long the first replica read after an invalidation waits for the replica to catch up before asking the primary. */
const REPLICA_WAIT_S = 0.05;

/** The replication position replica reads must have reached (see MySqlStore.fenced). */
class ReplicaFence {
  /** The freshness the position was read for. */
  freshness: number | null = null;
  /** The primary's GTID position then ("" when it has none: no binary log). */
  position: Promise<string> | null = null;
  /** A position the replica is known to have reached. */
  confirmed: string | null = null;
}

const NOT_READ = Symbol("not read from the replica");

/** Keys per last-used UPDATE: small enough not to stall the event loop or MariaDB, large enough to stay rare. */
export const LAST_USED_CHUNK = 1000;
/** Rows per credit_usage INSERT: keeps each statement well under max_allowed_packet. */
const CREDIT_CHUNK = 1000;

/** The revoke reason of keys revoked because their creator left the organization. */
const MEMBER_REMOVED_REASON = "member removed";


/**
 * VerifyKey's first query: which organization (shard) holds the key whose
 * secret has this hash. key_lookup is sharded by hash (a Vitess lookup table),
 * so this is a point lookup on one shard.
 */
export const LOOKUP_HASH_SQL = "SELECT organization_id, key_id FROM key_lookup WHERE hash = ?";

/** The membership filter's load (src/keys/membership.ts): every hash, in primary-key order, a batch at a time. */
export const COUNT_HASHES_SQL = "SELECT COUNT(*) AS n FROM key_lookup";
export const SCAN_HASHES_SQL = "SELECT hash FROM key_lookup WHERE hash > ? ORDER BY hash LIMIT ?";

/**
 * VerifyKey's second query, on the organization's shard: the secret by
 * primary key, joined on the organization to the key, its creator's
 * membership and the organization.
 */
export const FIND_BY_HASH_SQL = `SELECT ${KEY_SELECT}, s.expire_time AS secret_expire_time,
  m.role AS member_role, o.api_access_enabled
FROM key_secrets s
JOIN api_keys k ON k.organization_id = s.organization_id AND k.id = s.key_id
LEFT JOIN members m ON m.organization_id = s.organization_id AND m.user_id = k.created_by
LEFT JOIN organizations o ON o.id = s.organization_id
WHERE s.organization_id = ? AND s.hash = ?`;

type VerifyRow = KeyRow & {
  secret_expire_time: Date | null;
  member_role: number | null;
  api_access_enabled: number | null;
};

interface AuditRow extends RowDataPacket {
  seq: string;
  id: string;
  organization_id: string;
  time: Date;
  actor_user_id: string;
  actor_role: number;
  caller: string;
  action: string;
  key_id: string;
  details: string;
}




export class MySqlStore implements Store {
  private readonly db: TimedPool;
  /** CreateKey's batching (create-batcher.ts); the writes are this store's. */
  private readonly creates = new CreateBatcher({
    createOne: (input) => this.createOne(input),
    createMany: (inputs) => this.insertKeys(inputs),
  });

  /** The read replica (MYSQL_REPLICA_URL), or null. */
  private readonly replica: TimedPool | null;
  /** Replica reads for VerifyKey, fenced by the verify cache's generation (see findByHash). */
  private readonly verifyFence = new ReplicaFence();
  /** Replica reads for listings, fenced by this store's own commits (read-your-writes). */
  private readonly listFence = new ReplicaFence();
  /** Reads answered by the replica and by the primary instead, for metrics and tests. */
  readonly replicaReads = { replica: 0, primary: 0 };

  private constructor(
    pool: Pool,
    private readonly url: string,
    pipelining: boolean,
    replica: Pool | null,
  ) {
    this.db = new TimedPool(pool, pipelining);
    this.replica = replica === null ? null : new TimedPool(replica, pipelining);
  }

  /**
   * Creates the connection pools (connections are opened on demand); does not migrate.
   * pipelining: see TimedPool (false for vtgate). replicaUrl: a read replica of the primary
   * (MariaDB, GTID replication) for cold verifications and listings.
   */
  static async open(url: string, options: { poolSize?: number; pipelining?: boolean; replicaUrl?: string | null } = {}): Promise<MySqlStore> {
    const pipelining = options.pipelining ?? true;
    const pool = createPool(url, options.poolSize ?? 10, pipelining);
    const replica = options.replicaUrl ? createPool(options.replicaUrl, options.poolSize ?? 10, pipelining) : null;
    return new MySqlStore(pool, url, pipelining, replica);
  }

  migrate(): Promise<void> {
    return guard(async () => {
      await runMigrations(this.url, CONNECT_TIMEOUT_MS);
    });
  }

  /**
   * For a service that may not run DDL (MIGRATE_ON_START=false): throws
   * SchemaBehindError when migrations are pending. Reads schema_migrations only.
   */
  async checkSchema(): Promise<void> {
    const applied = await guard(() => this.db.run((db) => appliedVersions(db)));
    const pending = await pendingMigrations(applied);
    if (pending.length > 0) throw new SchemaBehindError(pending);
  }

  ping(): Promise<void> {
    return guard(async () => {
      await this.db.run((db) => db.query("SELECT 1"));
    });
  }

  async close(): Promise<void> {
    await Promise.all([this.db.end(), this.replica?.end()]);
  }

  /**
   * Runs a read on the replica when it has applied everything the primary had
   * committed when `fence` was last moved, else on the primary. The fence moves
   * when `freshness` changes (null: read the primary): the primary's GTID
   * position is read then (once, shared by the reads waiting for it), and the
   * first replica read after it waits up to REPLICA_WAIT_S for the replica to
   * reach it (MASTER_GTID_WAIT); later ones skip the wait. A replica that is
   * further behind, unreachable, or not MariaDB is not read.
   */
  private async fenced<T>(fence: ReplicaFence, freshness: number | null, read: (db: Queryable & Pick<TimedConnection, "execute">) => Promise<T>): Promise<T> {
    const replica = this.replica;
    if (replica === null || freshness === null) return this.db.run(read);
    if (fence.freshness !== freshness && (fence.freshness === null || freshness > fence.freshness)) {
      fence.freshness = freshness;
      fence.confirmed = null;
      fence.position = this.db.run(async (db) => {
        const [rows] = await db.query<RowDataPacket[]>("SELECT @@gtid_binlog_pos AS position");
        return String(rows[0].position ?? "");
      });
    }
    const position = await fence.position!.catch(() => "");
    if (position === "") {
      this.replicaReads.primary++;
      return this.db.run(read);
    }
    const answer: { value: T } | typeof NOT_READ = await replica
      .run(async (db): Promise<{ value: T } | typeof NOT_READ> => {
        if (fence.confirmed !== position) {
          const [rows] = await db.query<RowDataPacket[]>("SELECT MASTER_GTID_WAIT(?, ?) AS waited", [position, REPLICA_WAIT_S]);
          if (Number(rows[0].waited) !== 0) return NOT_READ;
          fence.confirmed = position;
        }
        return { value: await read(db) };
      })
      .catch((): typeof NOT_READ => NOT_READ);
    if (answer === NOT_READ) {
      this.replicaReads.primary++;
      return this.db.run(read);
    }
    this.replicaReads.replica++;
    return answer.value;
  }

  /** Connection pool usage, for metrics (read when scraped, not per query). */
  poolStats(): PoolStats {
    return this.db.stats();
  }

  /** Written in batches with other creates of its organization (see CreateBatcher). */
  createKey(input: NewKey): Promise<CreatedKey> {
    return this.creates.add(input);
  }

  private createOne(input: NewKey): Promise<CreatedKey> {
    const { key } = input;
    return guard(async () => {
      try {
        const [created] = await this.insertKeys([input]);
        return { ...created, created: true };
      } catch (err) {
        if (input.requestId !== "" && errorCode(err) === "ER_DUP_ENTRY") {
          const [rows] = await this.db.run((db) =>
            db.query<KeyRow[]>(`SELECT ${KEY_SELECT} FROM api_keys k WHERE k.organization_id = ? AND k.request_id = ?`, [
              key.organizationId,
              input.requestId,
            ]),
          );
          if (rows.length > 0) {
            // The lookup row written ahead of the refused insert points at no secret; it goes.
            await this.db.run((db) => db.query("DELETE FROM key_lookup WHERE hash = ?", [input.hash]));
            return { key: toKey(rows[0]), created: false, memberChanged: false };
          }
        }
        throw err;
      }
    });
  }

  /** The keys written in one transaction (see insertKeys). */
  private insertKeys(inputs: NewKey[]): Promise<Omit<CreatedKey, "created">[]> {
    // Read committed: insertKeys locks its creators' member rows, existing or not (see there). The
    // lookup rows go first, on their own (their shard is the hash's, not the organization's): a lookup
    // row without its secret (the transaction failed) finds nothing, a secret is never without one.
    return this.db.transaction((tx) => insertKeys(tx, inputs), {
      readCommitted: true,
      before: [lookupInsert(inputs.map((input) => [input.hash, input.key.organizationId, input.key.id]))],
    });
  }

  getKey(organizationId: string, keyId: string): Promise<KeyRecord | null> {
    return guard(() => this.db.run((db) => selectKey(db, organizationId, keyId)));
  }

  listKeys(query: ListKeysQuery): Promise<Page<KeyRecord>> {
    const where = ["k.organization_id = ?"];
    const params: unknown[] = [query.organizationId];
    if (query.projectId !== "") {
      where.push("k.project_id = ?");
      params.push(query.projectId);
    }
    if (query.createdBy !== "") {
      where.push("k.created_by = ?");
      params.push(query.createdBy);
    }
    if (!query.showRevoked) where.push("k.revoke_time IS NULL");
    if (query.after !== null) {
      where.push("k.seq < ?");
      params.push(BigInt(query.after));
    }
    params.push(query.limit + 1);
    return guard(async () => {
      // From the replica once it has this instance's own writes (read-your-writes).
      const [rows] = await this.fenced(this.listFence, this.db.commits, (db) =>
        db.query<KeyRow[]>(`SELECT ${KEY_SELECT} FROM api_keys k WHERE ${where.join(" AND ")} ORDER BY k.seq DESC LIMIT ?`, params),
      );
      return pageOf(rows, query.limit, toKey);
    });
  }

  findByHash(hash: Buffer, freshness?: number): Promise<VerifyRecord | null> {
    return guard(async () => {
      // Prepared statements: the hot path skips parsing on every call. Two point lookups, each routed
      // to one shard: the hash's (key_lookup), then the organization's.
      const find = async (db: Pick<TimedConnection, "execute">) => {
        const [found] = await db.execute<RowDataPacket[]>(LOOKUP_HASH_SQL, [hash]);
        if (found.length === 0) return [];
        return (await db.execute<VerifyRow[]>(FIND_BY_HASH_SQL, [found[0].organization_id, hash]))[0];
      };
      let rows = await this.fenced(this.verifyFence, freshness ?? null, find);
      // A key the replica does not have yet (created a moment ago) is asked of the primary: not found is
      // cached, and must not be for a key that exists.
      if (rows.length === 0 && this.replica !== null && freshness !== undefined) rows = await this.db.run(find);
      if (rows.length === 0) return null;
      const row = rows[0];
      return {
        key: toKey(row),
        secretExpireTime: toMs(row.secret_expire_time),
        memberRole: row.member_role === null ? null : (row.member_role as Role),
        // No organization row: nobody has switched it off.
        orgEnabled: row.api_access_enabled !== 0,
      };
    });
  }

  countSecretHashes(): Promise<number> {
    return guard(async () => {
      const [rows] = await this.db.run((db) => db.query<RowDataPacket[]>(COUNT_HASHES_SQL));
      return Number(rows[0].n);
    });
  }

  scanSecretHashes(after: Buffer | null, limit: number): Promise<Buffer[]> {
    return guard(async () => {
      const [rows] = await this.db.run((db) => db.query<RowDataPacket[]>(SCAN_HASHES_SQL, [after ?? Buffer.alloc(0), limit]));
      return rows.map((r) => r.hash as Buffer);
    });
  }

  updateKey({ organizationId, keyId, patch, now, audit, invalidation }: UpdateKeyCommand): Promise<KeyRecord | null> {
    const columns: Record<string, unknown> = { update_time: toDate(now) };
    if (patch.name !== undefined) columns.name = patch.name;
    if (patch.scopes !== undefined) columns.scopes = JSON.stringify(patch.scopes);
    if (patch.expireTime !== undefined) columns.expire_time = toDate(patch.expireTime);
    if (patch.metadata !== undefined) columns.metadata = JSON.stringify(patch.metadata);
    if (patch.limits !== undefined) Object.assign(columns, limitValues(patch.limits));
    return guard(() =>
      this.db.transaction(async (conn) => {
        // A revoked key is never changed; checked in the write itself, so a racing revoke cannot slip in between.
        const [res] = await conn.query<ResultSetHeader>(
          "UPDATE api_keys SET ? WHERE organization_id = ? AND id = ? AND revoke_time IS NULL",
          [columns, organizationId, keyId],
        );
        if (res.affectedRows === 0) return null;
        insertAudit(conn, audit);
        insertOutbox(conn, audit, invalidation);
        return selectKey(conn, organizationId, keyId);
      }),
    );
  }

  rotateKey({ organizationId, keyId, rotation, now, audit, invalidation }: RotateKeyCommand): Promise<KeyRecord | null> {
    const graceEnd = rotation.oldSecretExpireTime;
    const graceOver = graceEnd <= now;
    return guard(async () => {
      const { key, deleted } = await this.db.transaction(
        async (conn) => {
          // Lock the key row first, so concurrent rotations of one key queue here.
          const [res] = await conn.query<ResultSetHeader>(
            `UPDATE api_keys SET preview = ?, rotate_time = ?, previous_secret_expire_time = ?, update_time = ?
             WHERE organization_id = ? AND id = ? AND revoke_time IS NULL`,
            [rotation.newPreview, toDate(now), graceOver ? null : toDate(graceEnd), toDate(now), organizationId, keyId],
          );
          if (res.affectedRows === 0) return { key: null, deleted: [rotation.newHash] };
          // Secrets whose grace is over are deleted rather than kept expired, so a key holds only its live secrets.
          const ending = graceOver ? "" : " AND expire_time <= ?";
          const endingValues = graceOver ? [] : [toDate(now)];
          const gone = conn.later<RowDataPacket[]>(
            `SELECT hash FROM key_secrets WHERE organization_id = ? AND key_id = ?${ending} FOR UPDATE`,
            [organizationId, keyId, ...endingValues],
          );
          conn.later(`DELETE FROM key_secrets WHERE organization_id = ? AND key_id = ?${ending}`, [organizationId, keyId, ...endingValues]);
          if (!graceOver) {
            conn.later(
              "UPDATE key_secrets SET expire_time = LEAST(COALESCE(expire_time, ?), ?) WHERE organization_id = ? AND key_id = ?",
              [toDate(graceEnd), toDate(graceEnd), organizationId, keyId],
            );
          }
          conn.later("INSERT INTO key_secrets (organization_id, hash, key_id, expire_time) VALUES (?, ?, ?, NULL)", [
            organizationId,
            rotation.newHash,
            keyId,
          ]);
          insertAudit(conn, audit);
        insertOutbox(conn, audit, invalidation);
          const key = await selectKey(conn, organizationId, keyId);
          return { key, deleted: gone.result!.map((r) => r.hash as Buffer) };
        },
        { before: [lookupInsert([[rotation.newHash, organizationId, keyId]])] },
      );
      // The deleted secrets' lookup rows (or the unused new one), after the commit: a lookup row without
      // its secret finds nothing, so one left behind by a failure here is harmless.
      if (deleted.length > 0) await this.db.run((db) => db.query("DELETE FROM key_lookup WHERE hash IN (?)", [deleted])).catch(() => {});
      return key;
    });
  }

  async revokeKey({ organizationId, keyId, revokedBy, reason, now, audit, permission, invalidation }: RevokeKeyCommand): Promise<{ key: KeyRecord; changed: boolean } | null> {
    // One round trip: the policy is a condition of the UPDATE, the audit event is
    // recorded only if the UPDATE changed the row, and the key is read back, all
    // with the COMMIT. Only when nothing changed is the policy asked why.
    const { revoked, row } = await guard(() =>
      this.db.transaction(async (tx) => {
        const { revocable } = permission;
        let update: Slot<ResultSetHeader> | null = null;
        if (revocable.kind !== "none") {
          update = tx.later(
            `UPDATE api_keys SET ${REVOKED} WHERE organization_id = ? AND id = ? AND revoke_time IS NULL${revocable.kind === "own" ? " AND created_by = ?" : ""}`,
            [...revokedValues(revokedBy, reason, now), organizationId, keyId, ...(revocable.kind === "own" ? [revocable.userId] : [])],
          );
          if (this.db.pipelining) {
            insertAudit(tx, audit, "ROW_COUNT() = 1");
            // ROW_COUNT() is now the audit INSERT's: 1 exactly when the UPDATE revoked the key.
            insertOutbox(tx, audit, invalidation, "ROW_COUNT() = 1");
          } else {
            // vtgate takes no INSERT … SELECT … WHERE ROW_COUNT(): one more round trip to ask.
            await tx.send();
            if (update.result!.affectedRows === 1) {
              insertAudit(tx, audit);
              insertOutbox(tx, audit, invalidation);
            }
          }
        }
        const select = tx.later<KeyRow[]>(`SELECT ${KEY_SELECT} FROM api_keys k WHERE k.organization_id = ? AND k.id = ?`, [
          organizationId,
          keyId,
        ]);
        await tx.commit();
        return { revoked: update?.result?.affectedRows === 1, row: select.result?.[0] };
      }),
    );
    if (row === undefined) return null;
    const key = toKey(row);
    return revoked ? { key, changed: true } : unchangedByRevoke(key, permission);
  }

  revokeKeysCreatedBy({ organizationId, createdBy, revokedBy, reason, now, audit, invalidation }: RevokeKeysCommand): Promise<ChangedKeys> {
    return guard(() =>
      this.db.transaction(async (conn) => {
        const changed = await revokeCreatedBy(conn, organizationId, createdBy, revokedBy, reason, now);
        insertAudit(conn, audit);
        // Nothing revoked: nothing to announce.
        if (changed.keyIds.length > 0) insertOutbox(conn, audit, invalidation);
        return changed;
      }),
    );
  }

  getMember(organizationId: string, userId: string): Promise<MemberRecord | null> {
    return guard(async () => {
      const [rows] = await this.db.run((db) =>
        db.query<RowDataPacket[]>("SELECT role, update_time FROM members WHERE organization_id = ? AND user_id = ?", [organizationId, userId]),
      );
      if (rows.length === 0) return null;
      return { organizationId, userId, role: Number(rows[0].role), updateTime: (rows[0].update_time as Date).getTime() };
    });
  }

  setMemberRole({ organizationId, userId, role, now, audit, invalidation }: SetMemberRoleCommand): Promise<MemberRecord> {
    return guard(() =>
      this.db.transaction(async (conn) => {
        upsertMember(conn, organizationId, userId, role, now);
        insertAudit(conn, audit);
        insertOutbox(conn, audit, invalidation);
        return { organizationId, userId, role, updateTime: now };
      }),
    );
  }

  removeMember({ organizationId, userId, revokeKeys, now, audit, invalidation }: RemoveMemberCommand): Promise<ChangedKeys> {
    return guard(() =>
      this.db.transaction(async (conn) => {
        await conn.query("DELETE FROM members WHERE organization_id = ? AND user_id = ?", [organizationId, userId]);
        const changed = revokeKeys
          ? await revokeCreatedBy(conn, organizationId, userId, audit.actorUserId, MEMBER_REMOVED_REASON, now)
          : { keyIds: [] };
        insertAudit(conn, audit);
        insertOutbox(conn, audit, invalidation);
        return changed;
      }),
    );
  }

  setApiAccess({ organizationId, enabled, now, audit, invalidation }: SetApiAccessCommand): Promise<OrganizationRecord> {
    return guard(() =>
      this.db.transaction(async (conn) => {
        await conn.query(
          `INSERT INTO organizations (id, api_access_enabled, update_time) VALUES (?, ?, ?)
           ON DUPLICATE KEY UPDATE api_access_enabled = VALUES(api_access_enabled), update_time = VALUES(update_time)`,
          [organizationId, enabled, toDate(now)],
        );
        insertAudit(conn, audit);
        insertOutbox(conn, audit, invalidation);
        return { id: organizationId, apiAccessEnabled: enabled, updateTime: now };
      }),
    );
  }

  listAuditEvents({ organizationId, after, limit }: AuditQuery): Promise<Page<AuditRecord>> {
    const params: unknown[] = [organizationId];
    if (after !== null) params.push(BigInt(after));
    params.push(limit + 1);
    return guard(async () => {
      const [rows] = await this.db.run((db) =>
        db.query<AuditRow[]>(
          `SELECT seq, id, organization_id, time, actor_user_id, actor_role, caller, action, key_id, details
           FROM audit_events WHERE organization_id = ? ${after !== null ? "AND seq < ?" : ""}
           ORDER BY seq DESC LIMIT ?`,
          params,
        ),
      );
      return pageOf(rows, limit, toAudit);
    });
  }

  replaceSecretHash(organizationId: string, keyId: string, oldHash: Buffer, newHash: Buffer): Promise<boolean> {
    return guard(async () => {
      // The new hash's lookup row first, the old one's after (see insertKeys' lookup rows).
      await this.db.run((db) => db.query(...lookupInsert([[newHash, organizationId, keyId]])));
      const [result] = await this.db.run((db) =>
        db.query<ResultSetHeader>("UPDATE key_secrets SET hash = ? WHERE organization_id = ? AND hash = ?", [newHash, organizationId, oldHash]),
      );
      const replaced = result.affectedRows === 1;
      await this.db.run((db) => db.query("DELETE FROM key_lookup WHERE hash = ?", [replaced ? oldHash : newHash]));
      return replaced;
    });
  }

  touchLastUsed(entries: ReadonlyMap<string, ReadonlyMap<string, number>>): Promise<void> {
    if (entries.size === 0) return Promise.resolve();
    return guard(async () => {
      // One organization per statement (one shard). In chunks, one after another: a single statement for
      // every key used in an interval (tens of thousands under load) blocked the event loop while it was
      // formatted and held a connection and MariaDB's CPU long enough to show in verification tail latency.
      // With pipelining, the statements of several small organizations share a round trip.
      const statements: [string, unknown[], number][] = [];
      for (const [organizationId, times] of entries) {
        const all = [...times];
        for (let at = 0; at < all.length; at += LAST_USED_CHUNK) {
          const chunk = all.slice(at, at + LAST_USED_CHUNK);
          const params: unknown[] = [];
          for (const [keyId, time] of chunk) params.push(keyId, toDate(time), toDate(time));
          params.push(organizationId, chunk.map(([keyId]) => keyId));
          statements.push([
            `UPDATE api_keys SET last_used_time = CASE id ${"WHEN ? THEN IF(last_used_time >= CAST(? AS DATETIME(3)), last_used_time, CAST(? AS DATETIME(3))) ".repeat(chunk.length)}END
             WHERE organization_id = ? AND id IN (?)`,
            params,
            chunk.length,
          ]);
        }
      }
      await this.runEach(statements, LAST_USED_CHUNK);
    });
  }

  pendingInvalidations(createdBefore: number, limit: number): Promise<OutboxEntry[]> {
    return guard(async () => {
      const [rows] = await this.db.run((db) =>
        db.query<RowDataPacket[]>(
          `SELECT organization_id, id, create_time, invalidation FROM invalidation_outbox
           WHERE create_time < ? ORDER BY create_time LIMIT ?`,
          [toDate(createdBefore), limit],
        ),
      );
      return rows.map((r) => ({
        organizationId: r.organization_id as string,
        id: r.id as string,
        createTime: toMs(r.create_time as Date)!,
        // MySQL returns JSON columns parsed, MariaDB (JSON is LONGTEXT there) as text.
        invalidation: (typeof r.invalidation === "string" ? JSON.parse(r.invalidation) : r.invalidation) as Invalidation,
      }));
    });
  }

  deleteInvalidations(refs: readonly OutboxRef[]): Promise<void> {
    const byOrganization = new Map<string, string[]>();
    for (const ref of refs) {
      const ids = byOrganization.get(ref.organizationId);
      if (ids === undefined) byOrganization.set(ref.organizationId, [ref.id]);
      else ids.push(ref.id);
    }
    // One statement per organization: each touches one shard.
    return guard(async () => {
      for (const [organizationId, ids] of byOrganization) {
        await this.db.run((db) => db.query("DELETE FROM invalidation_outbox WHERE organization_id = ? AND id IN (?)", [organizationId, ids]));
      }
    });
  }

  /**
   * The credit ledger, on this store's pool: credit_usage rows by organization, key and month.
   * close() leaves the pool to the store.
   */
  creditLedger(): CreditLedger {
    return {
      load: (organizationId, keyId, month) =>
        guard(async () => {
          const [rows] = await this.db.run((db) =>
            db.query<RowDataPacket[]>("SELECT used FROM credit_usage WHERE organization_id = ? AND key_id = ? AND month = ?", [
              organizationId,
              keyId,
              month,
            ]),
          );
          return rows.length === 0 ? 0 : Number(rows[0].used);
        }),
      save: (entries) => guard(() => this.saveCredits(entries)),
      close: () => Promise.resolve(),
    };
  }

  private async saveCredits(entries: readonly CreditUsage[]): Promise<void> {
    const byOrganization = new Map<string, CreditUsage[]>();
    for (const e of entries) {
      const list = byOrganization.get(e.organizationId);
      if (list === undefined) byOrganization.set(e.organizationId, [e]);
      else list.push(e);
    }
    const statements: [string, unknown[], number][] = [];
    for (const [organizationId, usage] of byOrganization) {
      for (let i = 0; i < usage.length; i += CREDIT_CHUNK) {
        const chunk = usage.slice(i, i + CREDIT_CHUNK);
        const params: (string | number)[] = [];
        for (const e of chunk) params.push(organizationId, e.keyId, e.month, e.used);
        // `used` never goes down: writes keep the larger value. VALUES() rather than the row alias:
        // MariaDB does not support the alias.
        statements.push([
          `INSERT INTO credit_usage (organization_id, key_id, month, used, update_time) VALUES ${list(chunk.length, "(?, ?, ?, ?, UTC_TIMESTAMP(3))")}
           ON DUPLICATE KEY UPDATE
             update_time = IF(VALUES(used) > used, VALUES(update_time), update_time),
             used = GREATEST(used, VALUES(used))`,
          params,
          chunk.length,
        ]);
      }
    }
    await this.runEach(statements, CREDIT_CHUNK);
  }

  /**
   * Runs independent (autocommitted) statements [sql, values, rows] on one connection, in order.
   * With pipelining, small ones share a round trip, up to `rowsPerTrip` rows (so a flush of many
   * small organizations costs the round trips of one large one).
   */
  private runEach(statements: [string, unknown[], number][], rowsPerTrip: number): Promise<void> {
    return this.db.run(async (db) => {
      if (!this.db.pipelining) {
        for (const [sql, values] of statements) await db.query(sql, values);
        return;
      }
      let batch: string[] = [];
      let weight = 0;
      for (const [sql, values, rows] of statements) {
        db.record(sql, values);
        batch.push(db.format(sql, values));
        weight += rows;
        if (weight >= rowsPerTrip) {
          await db.send(batch.join(";\n"));
          batch = [];
          weight = 0;
        }
      }
      if (batch.length > 0) await db.send(batch.join(";\n"));
    });
  }
}



/** The key_lookup rows of these secrets ([hash, organization, key]), as one statement (a repeat overwrites: see createOne). */
function lookupInsert(rows: [hash: Buffer, organizationId: string, keyId: string][]): [string, unknown[]] {
  return [
    `INSERT INTO key_lookup (hash, organization_id, key_id) VALUES ${list(rows.length, "(?, ?, ?)")}
     ON DUPLICATE KEY UPDATE organization_id = VALUES(organization_id), key_id = VALUES(key_id)`,
    rows.flat(),
  ];
}

async function selectKey(db: Queryable, organizationId: string, keyId: string): Promise<KeyRecord | null> {
  const [rows] = await db.query<KeyRow[]>(`SELECT ${KEY_SELECT} FROM api_keys k WHERE k.organization_id = ? AND k.id = ?`, [
    organizationId,
    keyId,
  ]);
  return rows.length === 0 ? null : toKey(rows[0]);
}

/**
 * Adds the keys, their secrets, their organizations and creators (when new)
 * and their audit events, then commits: one round trip for any number of
 * keys. Says, for each key in order, whether its creator's recorded role
 * changed.
 */
async function insertKeys(tx: Transaction, inputs: NewKey[]): Promise<Omit<CreatedKey, "created">[]> {
  // The keys go first: a concurrent retry of the same request waits on its unique (organization, request)
  // entry and then fails with a duplicate before it has touched anything else.
  const columns = ["seq", ...KEY_INSERT_COLUMNS, "request_id"];
  tx.later(
    `INSERT INTO api_keys (${columns.join(", ")}) VALUES ${tuples(inputs.length, columns.length)}`,
    inputs.flatMap((input) => [nextPosition(), ...insertValues(input.key), input.requestId === "" ? null : input.requestId]),
  );
  tx.later(
    `INSERT INTO key_secrets (organization_id, hash, key_id, expire_time) VALUES ${list(inputs.length, "(?, ?, ?, NULL)")}`,
    inputs.flatMap((input) => [input.key.organizationId, input.hash, input.key.id]),
  );
  // Rows are locked in one order (organization, user) by every batch, so concurrent batches never deadlock.
  const byCreator = [...inputs].sort((a, b) => compareCreators(a.key, b.key));
  const creators = byCreator.map((input) => [input.key.organizationId, input.key.createdBy]);
  // The creators' memberships before this call: a creator added now may have keys instances hold as a
  // non-member's. A locking read: it waits for a concurrent change of a creator's membership and reads what
  // that change wrote. Under read committed a creator without a row yet locks no gap, so new creators' first
  // creates do not deadlock; two such creates of one creator both read no row and both say added, at worst one
  // broadcast too many.
  const before = tx.later<RowDataPacket[]>(
    `SELECT organization_id, user_id, role FROM members WHERE ${creators.map(() => "(organization_id = ? AND user_id = ?)").join(" OR ")} FOR UPDATE`,
    creators.flat(),
  );
  // A new organization's row is as old as its first key of the batch.
  const organizations = new Map<string, number>();
  for (const { key } of inputs) if (!organizations.has(key.organizationId)) organizations.set(key.organizationId, key.createTime);
  const byId = [...organizations].sort(([a], [b]) => compareText(a, b));
  // Existing rows get shared locks only (INSERT IGNORE) or are left as they are when nothing changed, so
  // creates of different users never wait for each other; one user's concurrent creates queue on their
  // member row until commit.
  tx.later(
    `INSERT IGNORE INTO organizations (id, api_access_enabled, update_time) VALUES ${list(byId.length, "(?, TRUE, ?)")}`,
    byId.flatMap(([id, time]) => [id, toDate(time)]),
  );
  // A creator who is not a member yet is added with its enrollRole; an existing member's row is left as it is
  // (membership changes only through OrganizationService). In a batch, a creator's first create has the word.
  const enrolled = byCreator.filter((input) => input.enrollRole !== null);
  // A creator added now is announced ("member") through the outbox too, so that a failed broadcast fails no
  // CreateKey: a row for each creator's first create. enrollRole is set only for a creator the service read as
  // no member, so the row is wanted but for a race with another create enrolling them: one broadcast too many.
  const memberRows = new Set<NewKey>();
  for (const [i, input] of enrolled.entries()) {
    if (i > 0 && compareCreators(enrolled[i - 1].key, input.key) === 0) continue;
    memberRows.add(input);
    const { organizationId, createdBy: userId } = input.key;
    insertOutbox(tx, { ...input.audit, id: memberOutboxId(input.audit.id) }, { kind: "member", organizationId, userId });
  }
  if (enrolled.length > 0) {
    tx.later(
      `INSERT INTO members (organization_id, user_id, role, update_time) VALUES ${tuples(enrolled.length, 4)}
       ON DUPLICATE KEY UPDATE user_id = user_id`,
      enrolled.flatMap((input) => [input.key.organizationId, input.key.createdBy, input.enrollRole, toDate(input.key.createTime)]),
    );
  }
  insertAudits(tx, inputs.map((input) => input.audit));
  // The new secrets' "created" announcement, in the outbox with them: one row for the batch (one
  // organization), so a failed or never-made broadcast is published by another instance (docs/revocation.md).
  const marks = inputs.flatMap((input) => (input.mark == null ? [] : [input.mark]));
  let announcement: Announcement | undefined;
  if (marks.length > 0) {
    const invalidation: Invalidation = { kind: "created", marks };
    insertOutbox(tx, inputs[0].audit, invalidation);
    announcement = { outbox: { organizationId: inputs[0].audit.organizationId, id: inputs[0].audit.id }, invalidation };
  }
  await tx.commit();
  const roles = new Map<string, number>();
  for (const row of before.result!) roles.set(creatorKey(row.organization_id as string, row.user_id as string), Number(row.role));
  return inputs.map((input) => {
    const creator = creatorKey(input.key.organizationId, input.key.createdBy);
    const added = input.enrollRole !== null && !roles.has(creator);
    if (added) roles.set(creator, input.enrollRole!);
    // Stored exactly as given (times keep their milliseconds), so no read-back is needed.
    const created: Omit<CreatedKey, "created"> = { key: { ...input.key, limits: normalizeLimits(input.key.limits) }, memberChanged: added };
    if (input.mark != null) created.announcement = announcement;
    if (memberRows.has(input)) {
      const { organizationId, createdBy: userId } = input.key;
      created.memberAnnouncement = { outbox: { organizationId, id: memberOutboxId(input.audit.id) }, invalidation: { kind: "member", organizationId, userId } };
    }
    return created;
  });
}

function compareCreators(a: KeyRecord, b: KeyRecord): number {
  return compareText(a.organizationId, b.organizationId) || compareText(a.createdBy, b.createdBy);
}

/** By code unit, as the tables' binary collation orders ids. */
function compareText(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function creatorKey(organizationId: string, userId: string): string {
  return `${organizationId}\u0000${userId}`;
}

/** "(?, ?), (?, ?)" for rows=2, columns=2. */
function tuples(rows: number, columns: number): string {
  return list(rows, `(${list(columns, "?")})`);
}

/** `item`, `count` times, separated by commas. */
function list(count: number, item: string): string {
  return Array(count).fill(item).join(", ");
}

/** Queued: sent with the transaction's next statement or its COMMIT. */
function upsertMember(tx: Transaction, organizationId: string, userId: string, role: Role, now: number): void {
  tx.later(
    `INSERT INTO members (organization_id, user_id, role, update_time) VALUES (?, ?, ?, ?)
     ON DUPLICATE KEY UPDATE role = VALUES(role), update_time = VALUES(update_time)`,
    [organizationId, userId, role, toDate(now)],
  );
}

const AUDIT_COLUMNS = "seq, id, organization_id, time, actor_user_id, actor_role, caller, action, key_id, details";
const AUDIT_ROW = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";

function auditValues(audit: AuditRecord): unknown[] {
  return [
    nextPosition(),
    audit.id,
    audit.organizationId,
    toDate(audit.time),
    audit.actorUserId,
    audit.actorRole,
    audit.caller,
    audit.action,
    audit.keyId,
    JSON.stringify(audit.details),
  ];
}

/** Queued: sent with the transaction's next statement or its COMMIT; with `onlyIf`, recorded only if that SQL condition holds. */
function insertAudit(tx: Transaction, audit: AuditRecord, onlyIf?: string): void {
  if (onlyIf === undefined) return insertAudits(tx, [audit]);
  tx.later(`INSERT INTO audit_events (${AUDIT_COLUMNS}) SELECT ${AUDIT_ROW.slice(1, -1)} FROM DUAL WHERE ${onlyIf}`, auditValues(audit));
}

/** Queued, like insertAudit. */
function insertAudits(tx: Transaction, audits: AuditRecord[]): void {
  tx.later(`INSERT INTO audit_events (${AUDIT_COLUMNS}) VALUES ${list(audits.length, AUDIT_ROW)}`, audits.flatMap(auditValues));
}

/** Queued, like insertAudit (and like it with `onlyIf`): the change's invalidation in the outbox, under its audit event's id. */
function insertOutbox(tx: Transaction, audit: AuditRecord, invalidation: Invalidation | undefined, onlyIf?: string): void {
  if (invalidation === undefined) return;
  const values = [audit.organizationId, audit.id, toDate(audit.time), JSON.stringify(invalidation)];
  const columns = "organization_id, id, create_time, invalidation";
  if (onlyIf === undefined) tx.later(`INSERT INTO invalidation_outbox (${columns}) VALUES (?, ?, ?, ?)`, values);
  else tx.later(`INSERT INTO invalidation_outbox (${columns}) SELECT ?, ?, ?, ? FROM DUAL WHERE ${onlyIf}`, values);
}

/** What a revocation writes to its key's row: the SET clause, and its values. */
const REVOKED = "revoke_time = ?, revoked_by = ?, revoke_reason = ?, update_time = ?";

function revokedValues(revokedBy: string, reason: string, now: number): unknown[] {
  return [toDate(now), revokedBy, reason, toDate(now)];
}

/** Revokes the organization's keys at these positions (rows the caller has locked). */
function revokeSeqs(tx: Transaction, organizationId: string, seqs: string[], revokedBy: string, reason: string, now: number): void {
  tx.later(`UPDATE api_keys SET ${REVOKED} WHERE organization_id = ? AND seq IN (?)`, [
    ...revokedValues(revokedBy, reason, now),
    organizationId,
    seqs.map(BigInt),
  ]);
}

async function revokeCreatedBy(
  conn: Transaction,
  organizationId: string,
  createdBy: string,
  revokedBy: string,
  reason: string,
  now: number,
): Promise<ChangedKeys> {
  const [rows] = await conn.query<RowDataPacket[]>(
    "SELECT seq, id FROM api_keys WHERE organization_id = ? AND created_by = ? AND revoke_time IS NULL FOR UPDATE",
    [organizationId, createdBy],
  );
  if (rows.length > 0) revokeSeqs(conn, organizationId, rows.map((r) => r.seq as string), revokedBy, reason, now);
  return { keyIds: rows.map((r) => r.id as string) };
}

/** A page from limit+1 rows: the extra row only says that there is more. */
function pageOf<R extends { seq: string }, T>(rows: R[], limit: number, map: (row: R) => T): Page<T> {
  const items = rows.slice(0, limit);
  return {
    items: items.map(map),
    next: rows.length > limit && items.length > 0 ? items[items.length - 1].seq : null,
  };
}

function toAudit(row: AuditRow): AuditRecord {
  return {
    id: row.id,
    organizationId: row.organization_id,
    time: row.time.getTime(),
    actorUserId: row.actor_user_id,
    actorRole: row.actor_role as Role,
    caller: row.caller,
    action: row.action,
    keyId: row.key_id,
    details: JSON.parse(row.details) as Record<string, string>,
  };
}

function toDate(ms: number | null): Date | null {
  return ms === null ? null : new Date(ms);
}

function toMs(date: Date | null): number | null {
  return date === null ? null : date.getTime();
}
