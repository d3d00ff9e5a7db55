-- API keys (K1-K7). The secret itself is never stored: api_key_secrets holds
-- SHA-256 hashes, one row per issued secret, so a rotated key can accept its old
-- secret until a grace deadline (K4).

CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY NOT NULL,
    namespace_id TEXT NOT NULL REFERENCES namespaces(id) ON DELETE CASCADE,
    environment  TEXT NOT NULL,
    name         TEXT NOT NULL,
    last4        TEXT NOT NULL,
    labels       TEXT NOT NULL,
    allowed_apis TEXT NOT NULL,
    limits       TEXT NOT NULL,
    expires_at   INTEGER,
    revoked_at   INTEGER,
    created_by   TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
);
CREATE INDEX api_keys_namespace ON api_keys(namespace_id, environment, created_at);

CREATE TABLE api_key_secrets (
    secret_hash TEXT PRIMARY KEY NOT NULL,
    key_id      TEXT NOT NULL REFERENCES api_keys(id) ON DELETE CASCADE,
    created_at  INTEGER NOT NULL,
    -- Set on the old secret when the key is rotated: it stops working then.
    expires_at  INTEGER
);
CREATE INDEX api_key_secrets_key ON api_key_secrets(key_id);

CREATE TABLE api_key_audit (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    key_id  TEXT NOT NULL REFERENCES api_keys(id) ON DELETE CASCADE,
    time    INTEGER NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    details TEXT NOT NULL
);
CREATE INDEX api_key_audit_key ON api_key_audit(key_id, id);
