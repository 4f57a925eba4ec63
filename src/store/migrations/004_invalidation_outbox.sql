-- The invalidation outbox (docs/revocation.md): a change that affects
-- verification writes the invalidation it owes every instance's cache here, in
-- its own transaction, under its audit event's id. The row is deleted once the
-- change is announced; any instance with a healthy Redis publishes rows older
-- than its poll interval, so a change whose broadcast failed still reaches
-- every instance. Keyed by organization like every table (docs/vitess.md);
-- ix_invalidation_outbox_time serves the poll, the only query by time.
CREATE TABLE IF NOT EXISTS invalidation_outbox (
  organization_id VARCHAR(128) NOT NULL,
  id              VARCHAR(64)  NOT NULL,
  create_time     DATETIME(3)  NOT NULL,
  invalidation    JSON         NOT NULL,
  PRIMARY KEY (organization_id, id),
  KEY ix_invalidation_outbox_time (create_time)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
