-- Delivery by key: an inbox delivers the events of one key (by default the subject)
-- one at a time, in commit order. A failed delivery's row carries its key, and so do
-- the rows of the later events of that key parked behind it ("waiting"): only the
-- oldest live row of a key (its head) is claimed, so a failing event holds back its
-- own key and no other. NULL: the inbox keeps no order (key = "none").
ALTER TABLE herald_deliveries ADD COLUMN key TEXT;

-- Heads of keys, and whether an inbox has any key held back at all.
CREATE INDEX herald_deliveries_key ON herald_deliveries (inbox, key, id) WHERE dead = 0;
