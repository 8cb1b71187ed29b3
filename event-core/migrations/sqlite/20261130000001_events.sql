-- Herald events: immutable facts.
CREATE TABLE herald_events (
    id             INTEGER PRIMARY KEY,
    subject_type   TEXT    NOT NULL CHECK (subject_type <> ''),
    subject_id     TEXT    NOT NULL,
    actor_type     TEXT    NOT NULL CHECK (actor_type <> ''),
    actor_id       TEXT    NOT NULL,
    action         TEXT    NOT NULL CHECK (action <> ''),
    metadata       TEXT    NOT NULL DEFAULT '{}' CHECK (json_type(metadata) = 'object'),
    created_at     TEXT    NOT NULL,
    causation_id   INTEGER,
    correlation_id INTEGER
);

-- Feeds: each index ends with the feed order, so a page is one index range scan.
CREATE INDEX herald_events_subject ON herald_events (subject_type, subject_id, created_at DESC, id DESC);
CREATE INDEX herald_events_actor   ON herald_events (actor_type, actor_id, created_at DESC, id DESC);
CREATE INDEX herald_events_time    ON herald_events (created_at DESC, id DESC);

-- Immutability: the database refuses to change or remove a fact.
CREATE TRIGGER herald_events_no_update BEFORE UPDATE ON herald_events
BEGIN
    SELECT RAISE(ABORT, 'herald_events is append-only: UPDATE is not allowed');
END;

CREATE TRIGGER herald_events_no_delete BEFORE DELETE ON herald_events
BEGIN
    SELECT RAISE(ABORT, 'herald_events is append-only: DELETE is not allowed');
END;
