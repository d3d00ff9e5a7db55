-- Several instances on one database (O5) run on PostgreSQL only; SQLite is one
-- instance, which spends balances in memory exactly. The tables exist here too
-- so both backends share one schema and one recording statement, and SQLite
-- gets the same floor as PostgreSQL's CHECK constraints (SQLite cannot add a
-- CHECK to an existing table, so triggers refuse the same rows).
ALTER TABLE balances ADD COLUMN reserved_micros INTEGER NOT NULL DEFAULT 0;

CREATE TRIGGER balances_floor_insert BEFORE INSERT ON balances
    WHEN NEW.balance_micros < 0 OR NEW.reserved_micros < 0
        OR NEW.reserved_micros > NEW.balance_micros
BEGIN
    SELECT RAISE(ABORT, 'CHECK constraint failed: balances_floor');
END;

CREATE TRIGGER balances_floor_update BEFORE UPDATE ON balances
    WHEN NEW.balance_micros < 0 OR NEW.reserved_micros < 0
        OR NEW.reserved_micros > NEW.balance_micros
BEGIN
    SELECT RAISE(ABORT, 'CHECK constraint failed: balances_floor');
END;

CREATE TABLE cluster_instances (
    id           TEXT PRIMARY KEY NOT NULL,
    address      TEXT NOT NULL,
    version      TEXT NOT NULL,
    started_at   INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL
);

CREATE TABLE credit_leases (
    instance_id   TEXT NOT NULL,
    namespace_id  TEXT NOT NULL REFERENCES namespaces(id) ON DELETE CASCADE,
    environment   TEXT NOT NULL,
    amount_micros INTEGER NOT NULL CHECK (amount_micros >= 0),
    updated_at    INTEGER NOT NULL,
    PRIMARY KEY (instance_id, namespace_id, environment)
);
CREATE INDEX credit_leases_account ON credit_leases(namespace_id, environment);
