-- Immutability against REPLACE: `INSERT OR REPLACE` / `REPLACE INTO` resolve a key
-- conflict by deleting the old row without firing DELETE triggers (unless
-- recursive_triggers is on), so the no-delete trigger alone let them rewrite an
-- event. An insert may not reuse an id that exists. Herald's own inserts pass no id
-- (NEW.id is then -1 here, which no event has), so each costs one index probe.
CREATE TRIGGER herald_events_no_replace BEFORE INSERT ON herald_events
WHEN EXISTS (SELECT 1 FROM herald_events WHERE id = NEW.id)
BEGIN
    SELECT RAISE(ABORT, 'herald_events is append-only: replacing an event is not allowed');
END;
