-- One row per idempotency key ever applied (until purged): the request's fingerprint and the response it got.
-- The key is stored as bytes (VARBINARY): exact byte comparison, no collation folding or trailing-space padding.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    ikey VARBINARY(1020) NOT NULL PRIMARY KEY,
    fingerprint CHAR(64) CHARACTER SET ascii NOT NULL,
    response VARCHAR(255) CHARACTER SET ascii NOT NULL,
    created_at DATETIME(6) NOT NULL,
    expires_at DATETIME(6) NOT NULL,
    INDEX idempotency_keys_expires_at (expires_at)
) ENGINE = InnoDB;
