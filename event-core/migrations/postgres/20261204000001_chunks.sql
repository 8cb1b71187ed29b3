-- Spread inboxes copy events in chunks: one row per run of events of one partition
-- of keys (a hash of the key), not one delivery row per event. A worker claims a
-- partition's oldest chunk only, so the chunks of a partition (and the events of a
-- key, which always hashes to the same partition) run in commit order. A chunk holds
-- no failure: what fails, waits behind a failure, or is left unstarted at a stop
-- becomes a herald_deliveries row in the statement that deletes the chunk; a chunk
-- whose worker died is split into delivery rows, each counted one expiry.
CREATE TABLE herald_chunks (
    id          BIGSERIAL   PRIMARY KEY,
    inbox       TEXT        NOT NULL,
    -- NULL: the inbox keeps no order (key = "none"); any chunk may run.
    part        INTEGER,
    events      BIGINT[]    NOT NULL,
    -- The key of each event (NULL entries for key = "none").
    keys        TEXT[]      NOT NULL,
    lease_owner TEXT,
    lease_until TIMESTAMPTZ,
    created_at  TIMESTAMPTZ NOT NULL
);

-- Heads of partitions.
CREATE INDEX herald_chunks_part ON herald_chunks (inbox, part, id);
