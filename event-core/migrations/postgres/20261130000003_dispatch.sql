-- Delivery state: a checkpoint per inbox, plus one row per delivery that failed.
--
-- Positions are (tx_id, id): the writing transaction, then the event id. A reader
-- only takes events whose transaction is older than every transaction still
-- running (tx_id < pg_snapshot_xmin(pg_current_snapshot())), so nothing can commit
-- behind a checkpoint later, whatever order transactions commit in.
CREATE INDEX herald_events_position ON herald_events (tx_id, id);

CREATE TABLE herald_inboxes (
    name          TEXT        PRIMARY KEY,
    -- Every matching event at or before this position was delivered, or parked in
    -- herald_deliveries.
    checkpoint_tx BIGINT      NOT NULL,
    checkpoint_id BIGINT      NOT NULL,
    lease_owner   TEXT,
    lease_until   TIMESTAMPTZ,
    -- Leases that expired (a worker died or hung) while the checkpoint stood here.
    crash_tx      BIGINT,
    crash_id      BIGINT,
    crashes       INTEGER     NOT NULL DEFAULT 0,
    -- For an inbox that starts "now": the snapshot when it was first seen. Events
    -- visible in it were committed before the inbox existed and are skipped, even
    -- those above a horizon held back by an older running transaction.
    start_snapshot TEXT,
    created_at    TIMESTAMPTZ NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL
);

CREATE TABLE herald_deliveries (
    id          BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    inbox       TEXT        NOT NULL,
    event_id    BIGINT      NOT NULL,
    -- Failed attempts so far (a crashed attempt is not one: see expiries).
    attempts    INTEGER     NOT NULL,
    -- Leases of this delivery that expired before it finished.
    expiries    INTEGER     NOT NULL DEFAULT 0,
    next_at     TIMESTAMPTZ NOT NULL,
    last_error  TEXT        NOT NULL,
    dead        BOOLEAN     NOT NULL DEFAULT FALSE,
    lease_owner TEXT,
    lease_until TIMESTAMPTZ,
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL,
    UNIQUE (inbox, event_id)
);

CREATE INDEX herald_deliveries_due ON herald_deliveries (next_at) WHERE NOT dead;
CREATE INDEX herald_deliveries_dead ON herald_deliveries (inbox, updated_at) WHERE dead;
