-- Several instances on one database (O5).
--
-- Credit leases: an instance reserves part of an account's balance
-- (`reserved_micros`, the sum of the account's `credit_leases` rows) with one
-- conditional UPDATE and spends it in memory; a capture takes its cost out of
-- the balance, the reservation and the lease in one transaction. The database
-- itself refuses a negative balance and a reservation larger than the balance,
-- so the sum over instances can never exceed what the namespace has. The
-- checks are NOT VALID so an older database with a negative row still
-- migrates; every row written from now on is checked.
ALTER TABLE balances ADD COLUMN reserved_micros BIGINT NOT NULL DEFAULT 0;
ALTER TABLE balances ADD CONSTRAINT balances_floor
    CHECK (balance_micros >= 0) NOT VALID;
ALTER TABLE balances ADD CONSTRAINT balances_reserved_within
    CHECK (reserved_micros >= 0 AND reserved_micros <= balance_micros) NOT VALID;

-- Running instances; one that stops heartbeating is removed by another and
-- its leases go back to the balances.
CREATE TABLE cluster_instances (
    id           TEXT PRIMARY KEY NOT NULL,
    address      TEXT NOT NULL,
    version      TEXT NOT NULL,
    started_at   BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL
);

CREATE TABLE credit_leases (
    instance_id   TEXT NOT NULL,
    namespace_id  TEXT NOT NULL REFERENCES namespaces(id) ON DELETE CASCADE,
    environment   TEXT NOT NULL,
    amount_micros BIGINT NOT NULL CHECK (amount_micros >= 0),
    updated_at    BIGINT NOT NULL,
    PRIMARY KEY (instance_id, namespace_id, environment)
);
CREATE INDEX credit_leases_account ON credit_leases(namespace_id, environment);

-- Changes other instances must see at once are announced on the channel
-- `tally_changes` when they commit: keys (revocation, rotation, edits) and
-- catalog APIs by trigger, whatever code path changed them; credits and
-- serving pauses by the code that makes them. Instances also poll, so a lost
-- notification only delays a change.
CREATE FUNCTION tally_notify_key() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('tally_changes', 'key:' || COALESCE(NEW.id, OLD.id));
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER api_keys_changed AFTER INSERT OR UPDATE OR DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION tally_notify_key();

CREATE FUNCTION tally_notify_secret() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('tally_changes', 'key:' || COALESCE(NEW.key_id, OLD.key_id));
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER api_key_secrets_changed AFTER INSERT OR UPDATE OR DELETE ON api_key_secrets
    FOR EACH ROW EXECUTE FUNCTION tally_notify_secret();

CREATE FUNCTION tally_notify_catalog() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('tally_changes', 'catalog');
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER catalog_apis_changed AFTER INSERT OR UPDATE OR DELETE ON catalog_apis
    FOR EACH STATEMENT EXECUTE FUNCTION tally_notify_catalog();
