-- Seller pause state, bonus credits and subscription packages (C6, C7, C8).

-- Whether a seller's live serving was last seen paused, so that pausing and
-- resuming are each one event however often the state is checked.
CREATE TABLE seller_serving (
    namespace_id TEXT PRIMARY KEY NOT NULL REFERENCES namespaces(id) ON DELETE CASCADE,
    paused       INTEGER NOT NULL,
    changed_at   INTEGER NOT NULL
);

-- A bonus grant (C7). Bonus credits that expire are spent before other
-- credits, soonest expiry first; `remaining_micros` is what was left of the
-- grant when the ledger was last replayed against the grants. At `expires_at`
-- what remains leaves the balance through a `bonus_expired` entry.
CREATE TABLE bonus_grants (
    id               TEXT PRIMARY KEY NOT NULL,
    namespace_id     TEXT NOT NULL REFERENCES namespaces(id) ON DELETE CASCADE,
    environment      TEXT NOT NULL,
    reason           TEXT NOT NULL,
    memo             TEXT,
    amount_micros    INTEGER NOT NULL,
    remaining_micros INTEGER NOT NULL,
    expires_at       INTEGER,
    ledger_entry_id  INTEGER NOT NULL,
    status           TEXT NOT NULL,
    expired_micros   INTEGER NOT NULL DEFAULT 0,
    granted_by       TEXT NOT NULL,
    created_at       INTEGER NOT NULL
);
CREATE INDEX bonus_grants_namespace ON bonus_grants(namespace_id, environment, status);
CREATE INDEX bonus_grants_expiry ON bonus_grants(status, expires_at);

-- A subscription to a credit package (C6): each paid period credits the
-- package's credits. `period_end` is empty until the first payment.
CREATE TABLE subscriptions (
    id                   TEXT PRIMARY KEY NOT NULL,
    namespace_id         TEXT NOT NULL REFERENCES namespaces(id) ON DELETE CASCADE,
    environment          TEXT NOT NULL,
    package              TEXT NOT NULL,
    currency             TEXT NOT NULL,
    price_units          INTEGER NOT NULL,
    credits_micros       INTEGER NOT NULL,
    status               TEXT NOT NULL,
    period_end           INTEGER,
    cancel_at_period_end INTEGER NOT NULL DEFAULT 0,
    pending_intent_id    TEXT,
    created_by           TEXT NOT NULL,
    created_at           INTEGER NOT NULL,
    updated_at           INTEGER NOT NULL
);
CREATE INDEX subscriptions_namespace ON subscriptions(namespace_id, environment);
CREATE INDEX subscriptions_renewal ON subscriptions(status, period_end);

-- A payment intent that pays a subscription period credits the package, not
-- a conversion of the amount.
ALTER TABLE payment_intents ADD COLUMN subscription_id TEXT;
