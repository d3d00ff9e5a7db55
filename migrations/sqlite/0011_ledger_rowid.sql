-- The gateway's hot path writes one ledger entry per paid call (G6). With
-- AUTOINCREMENT every such commit also rewrote the `sqlite_sequence` page; a
-- plain INTEGER PRIMARY KEY (the rowid) takes the next id from the table's
-- own b-tree at no cost. Ids still only grow: entries are never deleted but
-- with their namespace, and an id is reused only if the newest entries of the
-- whole database are deleted that way, which no reference can outlive (bonus
-- grants that name an entry go with the same namespace).

CREATE TABLE ledger_entries_new (
    id                   INTEGER PRIMARY KEY,
    namespace_id         TEXT NOT NULL REFERENCES namespaces(id) ON DELETE CASCADE,
    environment          TEXT NOT NULL,
    time                 INTEGER NOT NULL,
    kind                 TEXT NOT NULL,
    amount_micros        INTEGER NOT NULL,
    balance_after_micros INTEGER NOT NULL,
    actor                TEXT NOT NULL,
    reference            TEXT,
    memo                 TEXT,
    rate_micros          INTEGER
);
INSERT INTO ledger_entries_new (id, namespace_id, environment, time, kind, amount_micros,
    balance_after_micros, actor, reference, memo, rate_micros)
SELECT id, namespace_id, environment, time, kind, amount_micros, balance_after_micros,
    actor, reference, memo, rate_micros
FROM ledger_entries;
DROP TABLE ledger_entries;
ALTER TABLE ledger_entries_new RENAME TO ledger_entries;
DELETE FROM sqlite_sequence WHERE name = 'ledger_entries';
CREATE INDEX ledger_entries_namespace ON ledger_entries(namespace_id, environment, id);
CREATE INDEX ledger_entries_kind ON ledger_entries(namespace_id, kind, time);
CREATE INDEX ledger_entries_time ON ledger_entries(namespace_id, environment, time);
