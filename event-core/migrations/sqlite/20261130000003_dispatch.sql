-- Delivery state: a checkpoint per inbox, plus one row per delivery that failed.
--
-- On SQLite a position is the event id: writers hold the single write lock from
-- BEGIN IMMEDIATE to COMMIT, so ids are handed out in commit order. The tx columns
-- stay 0; they exist so both backends share one shape.
CREATE TABLE herald_inboxes (
    name          TEXT    PRIMARY KEY,
    checkpoint_tx INTEGER NOT NULL,
    checkpoint_id INTEGER NOT NULL,
    lease_owner   TEXT,
    lease_until   TEXT,
    crash_tx      INTEGER,
    crash_id      INTEGER,
    crashes       INTEGER NOT NULL DEFAULT 0,
    start_snapshot TEXT,
    created_at    TEXT    NOT NULL,
    updated_at    TEXT    NOT NULL
) WITHOUT ROWID;

CREATE TABLE herald_deliveries (
    id          INTEGER PRIMARY KEY,
    inbox       TEXT    NOT NULL,
    event_id    INTEGER NOT NULL,
    attempts    INTEGER NOT NULL,
    expiries    INTEGER NOT NULL DEFAULT 0,
    next_at     TEXT    NOT NULL,
    last_error  TEXT    NOT NULL,
    dead        INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_until TEXT,
    created_at  TEXT    NOT NULL,
    updated_at  TEXT    NOT NULL,
    UNIQUE (inbox, event_id)
);

CREATE INDEX herald_deliveries_due ON herald_deliveries (next_at) WHERE dead = 0;
CREATE INDEX herald_deliveries_dead ON herald_deliveries (inbox, updated_at) WHERE dead = 1;
