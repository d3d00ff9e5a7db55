-- Signed webhooks (W1, W2).
--
-- An endpoint belongs to a namespace and subscribes to event types (an empty
-- list: all). Its signing secret must be readable to sign, so it is stored as
-- is (like an upstream credential), shown once at creation and on rotation;
-- after a rotation the previous secret also signs until its deadline.
CREATE TABLE webhook_endpoints (
    id                         TEXT PRIMARY KEY NOT NULL,
    namespace_id               TEXT NOT NULL REFERENCES namespaces(id) ON DELETE CASCADE,
    url                        TEXT NOT NULL,
    description                TEXT NOT NULL,
    event_types                TEXT NOT NULL,
    secret                     TEXT NOT NULL,
    previous_secret            TEXT,
    previous_secret_expires_at INTEGER,
    enabled                    INTEGER NOT NULL,
    disabled_reason            TEXT,
    -- The first failure since the last success: the endpoint is disabled
    -- when failures have lasted `webhooks.disable_after_secs`.
    failing_since              INTEGER,
    created_by                 TEXT NOT NULL,
    created_at                 INTEGER NOT NULL,
    updated_at                 INTEGER NOT NULL
);
CREATE INDEX webhook_endpoints_namespace ON webhook_endpoints(namespace_id, created_at);

-- One event as sent: its id is the `webhook-id` of every delivery and replay.
CREATE TABLE webhook_messages (
    id           TEXT PRIMARY KEY NOT NULL,
    namespace_id TEXT NOT NULL REFERENCES namespaces(id) ON DELETE CASCADE,
    event_type   TEXT NOT NULL,
    payload      TEXT NOT NULL,
    created_at   INTEGER NOT NULL
);

-- One message to one endpoint. `pending` until an attempt succeeds
-- (`succeeded`) or the retry schedule is used up (`failed`). An instance
-- claims due deliveries by setting `claimed_by` and `claimed_until` (one
-- attempt's time, renewed before each attempt it makes); one that dies
-- leaves its claims to expire.
CREATE TABLE webhook_deliveries (
    id              TEXT PRIMARY KEY NOT NULL,
    message_id      TEXT NOT NULL REFERENCES webhook_messages(id) ON DELETE CASCADE,
    endpoint_id     TEXT NOT NULL REFERENCES webhook_endpoints(id) ON DELETE CASCADE,
    namespace_id    TEXT NOT NULL REFERENCES namespaces(id) ON DELETE CASCADE,
    status          TEXT NOT NULL,
    attempts        INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    claimed_until   INTEGER NOT NULL,
    claimed_by      TEXT,
    last_status     INTEGER,
    created_at      INTEGER NOT NULL,
    finished_at     INTEGER
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries(status, next_attempt_at);
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries(endpoint_id, created_at);

CREATE TABLE webhook_attempts (
    id               INTEGER PRIMARY KEY,
    delivery_id      TEXT NOT NULL REFERENCES webhook_deliveries(id) ON DELETE CASCADE,
    attempted_at     INTEGER NOT NULL,
    status_code      INTEGER,
    latency_ms       INTEGER NOT NULL,
    succeeded        INTEGER NOT NULL,
    response_excerpt TEXT NOT NULL,
    error            TEXT
);
CREATE INDEX webhook_attempts_delivery ON webhook_attempts(delivery_id, id);

-- Keys warned of their coming expiry (a `key.expiring` event), once each.
ALTER TABLE api_keys ADD COLUMN expiry_warned_at INTEGER;
-- The last quota period a key used up (a `quota.reached` event), so each
-- quota and period is reported once, whichever instance refuses first.
ALTER TABLE api_keys ADD COLUMN quota_reached_period TEXT;
