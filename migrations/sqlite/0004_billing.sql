-- Top-ups, statements, low-balance alerts and auto top-ups (C2, C4, C5, C6).

-- The conversion rate of a top-up: micro-credits per whole unit of the paid
-- currency. Empty for entries that convert nothing (grants, faucet, usage).
ALTER TABLE ledger_entries ADD COLUMN rate_micros INTEGER;

-- Monthly statements sum the ledger by time.
CREATE INDEX ledger_entries_time ON ledger_entries(namespace_id, environment, time);

-- A request to top up: what the namespace means to pay. Amounts are in
-- millionths of one unit of the currency (USDC and USDT have 6 decimals).
CREATE TABLE payment_intents (
    id           TEXT PRIMARY KEY NOT NULL,
    namespace_id TEXT NOT NULL REFERENCES namespaces(id) ON DELETE CASCADE,
    environment  TEXT NOT NULL,
    currency     TEXT NOT NULL,
    amount_units INTEGER NOT NULL,
    status       TEXT NOT NULL,
    created_by   TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    paid_at      INTEGER
);
CREATE INDEX payment_intents_namespace ON payment_intents(namespace_id, id);

-- One row per credited deposit. The primary key makes an external transaction
-- id credit at most once; the unique intent makes an intent paid at most once.
CREATE TABLE deposits (
    external_tx_id  TEXT PRIMARY KEY NOT NULL,
    intent_id       TEXT NOT NULL REFERENCES payment_intents(id) ON DELETE CASCADE,
    namespace_id    TEXT NOT NULL REFERENCES namespaces(id) ON DELETE CASCADE,
    environment     TEXT NOT NULL,
    currency        TEXT NOT NULL,
    amount_units    INTEGER NOT NULL,
    rate_micros     INTEGER NOT NULL,
    credited_micros INTEGER NOT NULL,
    ledger_entry_id INTEGER NOT NULL,
    received_at     INTEGER NOT NULL
);
CREATE UNIQUE INDEX deposits_intent ON deposits(intent_id);

-- A low-balance threshold. `armed` is 1 while the balance is at or above the
-- threshold: the next drop below fires one event and disarms it, a balance back
-- at or above the threshold arms it again.
CREATE TABLE low_balance_alerts (
    namespace_id     TEXT NOT NULL REFERENCES namespaces(id) ON DELETE CASCADE,
    environment      TEXT NOT NULL,
    threshold_micros INTEGER NOT NULL,
    armed            INTEGER NOT NULL,
    last_fired_at    INTEGER,
    updated_at       INTEGER NOT NULL,
    PRIMARY KEY (namespace_id, environment)
);

-- An auto top-up rule (C6): when the balance drops below the threshold, a
-- payment intent for `amount_units` of `currency` is created for the payment
-- processor to pay from the namespace's standing authorization. Armed like
-- an alert: one intent per downward crossing.
CREATE TABLE auto_topups (
    namespace_id     TEXT NOT NULL REFERENCES namespaces(id) ON DELETE CASCADE,
    environment      TEXT NOT NULL,
    threshold_micros INTEGER NOT NULL,
    amount_units     INTEGER NOT NULL,
    currency         TEXT NOT NULL,
    armed            INTEGER NOT NULL,
    last_intent_id   TEXT,
    updated_at       INTEGER NOT NULL,
    PRIMARY KEY (namespace_id, environment)
);
