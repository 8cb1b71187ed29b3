-- Idempotent records: an event may carry a key (an order's request id, a webhook's
-- delivery id); a second record with the same key writes nothing and gives the
-- first event's id. One event per key, enforced by the database, so concurrent
-- writers of one key (in any process) end with exactly one event.
ALTER TABLE herald_events ADD COLUMN idempotency_key TEXT;
CREATE UNIQUE INDEX herald_events_idempotency ON herald_events (idempotency_key) WHERE idempotency_key IS NOT NULL;
