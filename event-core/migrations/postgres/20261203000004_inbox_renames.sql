-- Names an inbox was renamed or moved away from. A row here retires its name: a
-- process that still registers it (an older version, started while a rolling deploy
-- is under way) must not re-create the inbox under the old name, or both names would
-- deliver every new event.
CREATE TABLE herald_inbox_renames (
    name TEXT PRIMARY KEY,
    renamed_to TEXT NOT NULL,
    renamed_at TIMESTAMPTZ NOT NULL
);
