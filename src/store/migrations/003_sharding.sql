-- Every table keyed by its organization, so the schema can be sharded by
-- organization (Vitess: deploy/vitess/vschema.json, docs/vitess.md):
--
-- * key_secrets and credit_usage get organization_id (filled from api_keys).
-- * key_lookup maps a secret's hash to its organization and key: VerifyKey's
--   first point lookup, sharded by hash. Written ahead of key_secrets, deleted
--   after it, so a secret always has its lookup row (a lookup row without a
--   secret finds nothing).
-- * seq (the page position of keys and audit events) is made by the service
--   (src/store/positions.ts) instead of AUTO_INCREMENT, which counts per shard;
--   existing rows keep their numbers, all below the new ones. The primary keys
--   become (organization_id, seq): an organization's rows are clustered
--   together, in page order.

ALTER TABLE api_keys
  MODIFY seq BIGINT UNSIGNED NOT NULL,
  DROP PRIMARY KEY,
  ADD PRIMARY KEY (organization_id, seq),
  DROP KEY ix_api_keys_org_seq;

ALTER TABLE audit_events
  MODIFY seq BIGINT UNSIGNED NOT NULL,
  DROP PRIMARY KEY,
  ADD PRIMARY KEY (organization_id, seq),
  DROP KEY ix_audit_events_org_seq;

ALTER TABLE key_secrets
  ADD COLUMN organization_id VARCHAR(128) NOT NULL DEFAULT '' FIRST,
  DROP KEY ix_key_secrets_key;
UPDATE key_secrets s JOIN api_keys k ON k.id = s.key_id SET s.organization_id = k.organization_id;
ALTER TABLE key_secrets
  ALTER COLUMN organization_id DROP DEFAULT,
  ADD KEY ix_key_secrets_org_key (organization_id, key_id);

CREATE TABLE key_lookup (
  hash            BINARY(32)   NOT NULL,
  organization_id VARCHAR(128) NOT NULL,
  key_id          VARCHAR(128) NOT NULL,
  PRIMARY KEY (hash)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
INSERT INTO key_lookup (hash, organization_id, key_id) SELECT hash, organization_id, key_id FROM key_secrets;

-- Credits of keys that no longer exist keep organization_id '' (nothing reads them).
ALTER TABLE credit_usage
  ADD COLUMN organization_id VARCHAR(128) NOT NULL DEFAULT '' FIRST;
UPDATE credit_usage c JOIN api_keys k ON k.id = c.key_id SET c.organization_id = k.organization_id;
ALTER TABLE credit_usage
  ALTER COLUMN organization_id DROP DEFAULT,
  DROP PRIMARY KEY,
  ADD PRIMARY KEY (organization_id, key_id, month);
