-- The initial schema. Times are DATETIME(3) in UTC (the store converts to and
-- from epoch milliseconds). Every table uses utf8mb4_bin: ids are
-- case-sensitive (base62 key ids, tenant ids), and one collation everywhere
-- keeps joins and comparisons free of collation conversions that would
-- defeat indexes. IF NOT EXISTS because DDL is not transactional: a run that
-- failed half-way can simply be repeated.

CREATE TABLE IF NOT EXISTS organizations (
  id                 VARCHAR(128) NOT NULL,
  api_access_enabled BOOLEAN      NOT NULL DEFAULT TRUE,
  update_time        DATETIME(3)  NOT NULL,
  PRIMARY KEY (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE IF NOT EXISTS members (
  organization_id VARCHAR(128)     NOT NULL,
  user_id         VARCHAR(128)     NOT NULL,
  role            TINYINT UNSIGNED NOT NULL,
  update_time     DATETIME(3)      NOT NULL,
  PRIMARY KEY (organization_id, user_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- seq is the clustered key: it orders pages newest first and is the page
-- position, so a page never shifts when keys are added. The public id is a
-- separate unique key.
CREATE TABLE IF NOT EXISTS api_keys (
  seq                         BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
  id                          VARCHAR(128)    NOT NULL,
  organization_id             VARCHAR(128)    NOT NULL,
  project_id                  VARCHAR(128)    NOT NULL DEFAULT '',
  name                        VARCHAR(200)    NOT NULL DEFAULT '',
  prefix                      VARCHAR(32)     NOT NULL,
  preview                     VARCHAR(64)     NOT NULL,
  scopes                      JSON            NOT NULL,
  created_by                  VARCHAR(128)    NOT NULL,
  create_time                 DATETIME(3)     NOT NULL,
  update_time                 DATETIME(3)     NOT NULL,
  expire_time                 DATETIME(3)     NULL,
  last_used_time              DATETIME(3)     NULL,
  revoke_time                 DATETIME(3)     NULL,
  revoked_by                  VARCHAR(128)    NOT NULL DEFAULT '',
  revoke_reason               VARCHAR(500)    NOT NULL DEFAULT '',
  rotate_time                 DATETIME(3)     NULL,
  previous_secret_expire_time DATETIME(3)     NULL,
  metadata                    JSON            NOT NULL,
  -- All three NULL: no limits. 0 in one of them: that limit is unlimited.
  requests_per_minute         INT UNSIGNED    NULL,
  requests_per_day            INT UNSIGNED    NULL,
  monthly_credits             BIGINT UNSIGNED NULL,
  -- Idempotency scope of the create ("<caller>/<request id>"); NULL when none,
  -- and NULLs do not collide in the unique key.
  request_id                  VARCHAR(512)    NULL,
  PRIMARY KEY (seq),
  UNIQUE KEY uq_api_keys_id (id),
  UNIQUE KEY uq_api_keys_request (organization_id, request_id),
  KEY ix_api_keys_org_seq (organization_id, seq),
  KEY ix_api_keys_org_creator_seq (organization_id, created_by, seq),
  KEY ix_api_keys_org_project_seq (organization_id, project_id, seq)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- One row per live secret. A key has several during a rotation's grace
-- period; expire_time is NULL for the current secret.
CREATE TABLE IF NOT EXISTS key_secrets (
  hash        BINARY(32)   NOT NULL,
  key_id      VARCHAR(128) NOT NULL,
  expire_time DATETIME(3)  NULL,
  PRIMARY KEY (hash),
  KEY ix_key_secrets_key (key_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE IF NOT EXISTS audit_events (
  seq             BIGINT UNSIGNED  NOT NULL AUTO_INCREMENT,
  id              VARCHAR(64)      NOT NULL,
  organization_id VARCHAR(128)     NOT NULL,
  time            DATETIME(3)      NOT NULL,
  actor_user_id   VARCHAR(128)     NOT NULL,
  actor_role      TINYINT UNSIGNED NOT NULL,
  caller          VARCHAR(128)     NOT NULL,
  action          VARCHAR(64)      NOT NULL,
  key_id          VARCHAR(128)     NOT NULL,
  details         JSON             NOT NULL,
  PRIMARY KEY (seq),
  UNIQUE KEY uq_audit_events_id (id),
  KEY ix_audit_events_org_seq (organization_id, seq)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
