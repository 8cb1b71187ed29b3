-- Herald events: immutable facts.
CREATE TABLE herald_events (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subject_type   TEXT        NOT NULL CHECK (subject_type <> ''),
    subject_id     TEXT        NOT NULL,
    actor_type     TEXT        NOT NULL CHECK (actor_type <> ''),
    actor_id       TEXT        NOT NULL,
    action         TEXT        NOT NULL CHECK (action <> ''),
    metadata       JSONB       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    created_at     TIMESTAMPTZ NOT NULL,
    causation_id   BIGINT,
    correlation_id BIGINT,
    -- The writing transaction: sequence values are not commit-ordered, transaction ids
    -- plus pg_snapshot_xmin() tell a reader when every earlier writer has finished.
    tx_id          XID8        NOT NULL DEFAULT pg_current_xact_id()
);

-- Feeds: each index ends with the feed order, so a page is one index range scan.
CREATE INDEX herald_events_subject ON herald_events (subject_type, subject_id, created_at DESC, id DESC);
CREATE INDEX herald_events_actor   ON herald_events (actor_type, actor_id, created_at DESC, id DESC);
CREATE INDEX herald_events_time    ON herald_events (created_at DESC, id DESC);

-- Immutability: the database refuses to change or remove a fact.
CREATE FUNCTION herald_events_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'herald_events is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'restrict_violation';
END
$$;

CREATE TRIGGER herald_events_no_update_delete BEFORE UPDATE OR DELETE ON herald_events
    FOR EACH ROW EXECUTE FUNCTION herald_events_immutable();
CREATE TRIGGER herald_events_no_truncate BEFORE TRUNCATE ON herald_events
    FOR EACH STATEMENT EXECUTE FUNCTION herald_events_immutable();

-- Throttle locks: one row per throttled (subject, action); concurrent throttled
-- records of the same pair serialize on it.
CREATE TABLE herald_throttle (
    subject_type TEXT        NOT NULL,
    subject_id   TEXT        NOT NULL,
    action       TEXT        NOT NULL,
    last_at      TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (subject_type, subject_id, action)
);
