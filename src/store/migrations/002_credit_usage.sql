-- Credits used per key and calendar month (UTC): the durable side of the Redis
-- credit counters (src/limits/credit-ledger.ts), written in batches every
-- CREDIT_FLUSH_SECONDS and read only when Redis has no counter for the month.
-- `used` never goes down: writes keep the larger value. No foreign key to
-- api_keys: the flush is a blind batch upsert that should not lock key rows.
CREATE TABLE IF NOT EXISTS credit_usage (
  key_id      VARCHAR(128)    NOT NULL,
  month       CHAR(6)         NOT NULL, -- YYYYMM
  used        BIGINT UNSIGNED NOT NULL,
  update_time DATETIME(3)     NOT NULL,
  PRIMARY KEY (key_id, month)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
