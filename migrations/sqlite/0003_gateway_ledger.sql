-- The catalog, the credit ledger and usage events (G1-G5, C1, C3).

-- Operators run the server: they manage the catalog and grant credits.
ALTER TABLE accounts ADD COLUMN is_operator INTEGER NOT NULL DEFAULT 0;

-- The gateway's revocation poller finds changed keys by this.
CREATE INDEX api_keys_updated ON api_keys(updated_at);

-- One row per API; `config` is the operator's JSON configuration (upstream
-- credentials included, never shown to callers). `source` is `config` for APIs
-- that the config file owns, `api` for those made through the REST API.
CREATE TABLE catalog_apis (
    slug       TEXT PRIMARY KEY NOT NULL,
    config     TEXT NOT NULL,
    source     TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX catalog_apis_updated ON catalog_apis(updated_at);

-- The balance is the sum of the ledger; it is kept as a row, updated in the same
-- transaction as every ledger insert, so reading it never sums the ledger.
CREATE TABLE balances (
    namespace_id   TEXT NOT NULL REFERENCES namespaces(id) ON DELETE CASCADE,
    environment    TEXT NOT NULL,
    balance_micros INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    PRIMARY KEY (namespace_id, environment)
);

-- Append-only: rows are never updated or deleted (except with their namespace).
CREATE TABLE ledger_entries (
    id                   INTEGER PRIMARY KEY AUTOINCREMENT,
    namespace_id         TEXT NOT NULL REFERENCES namespaces(id) ON DELETE CASCADE,
    environment          TEXT NOT NULL,
    time                 INTEGER NOT NULL,
    kind                 TEXT NOT NULL,
    amount_micros        INTEGER NOT NULL,
    balance_after_micros INTEGER NOT NULL,
    actor                TEXT NOT NULL,
    reference            TEXT,
    memo                 TEXT
);
CREATE INDEX ledger_entries_namespace ON ledger_entries(namespace_id, environment, id);
CREATE INDEX ledger_entries_kind ON ledger_entries(namespace_id, kind, time);

-- One row per gateway call (G4); latencies in microseconds.
CREATE TABLE usage_events (
    id                  TEXT PRIMARY KEY NOT NULL,
    time                INTEGER NOT NULL,
    namespace_id        TEXT NOT NULL REFERENCES namespaces(id) ON DELETE CASCADE,
    environment         TEXT NOT NULL,
    key_id              TEXT NOT NULL,
    api                 TEXT NOT NULL,
    model               TEXT,
    endpoint            TEXT NOT NULL,
    request_type        TEXT NOT NULL,
    status              INTEGER NOT NULL,
    error               TEXT,
    latency_us          INTEGER NOT NULL,
    upstream_latency_us INTEGER NOT NULL,
    tokens_in           INTEGER NOT NULL,
    tokens_out          INTEGER NOT NULL,
    cost_micros         INTEGER NOT NULL,
    client_id           TEXT
);
CREATE INDEX usage_events_namespace ON usage_events(namespace_id, environment, time);
CREATE INDEX usage_events_key ON usage_events(key_id, time);
