-- Delivery by snapshot pairs: an inbox reads the events visible in one snapshot and
-- not in the one before, so an open (or prepared) transaction anywhere holds back
-- only its own events; the old horizon (pg_snapshot_xmin) was held back by any of them.
--
-- snap_from: every matching event visible in it was delivered (or parked).
-- snap_to:   the snapshot closing the pair being read, once a batch of it was
--            delivered; checkpoint_tx/checkpoint_id is then the last (tx_id, id)
--            of the pair passed. NULL: the next pair starts at a fresh snapshot.
ALTER TABLE herald_inboxes ADD COLUMN snap_from TEXT;
ALTER TABLE herald_inboxes ADD COLUMN snap_to TEXT;
-- Where the last expired lease stood (with crash_tx/crash_id), to count expiries there.
ALTER TABLE herald_inboxes ADD COLUMN crash_from TEXT;
ALTER TABLE herald_inboxes ADD COLUMN crash_to TEXT;

-- Existing checkpoints (tx, id) under the old horizon: every transaction below tx was
-- passed, and transaction tx up to id. As a pair: from 'tx:tx:' to 'tx+1:tx+1:' (just
-- transaction tx), passed up to (tx, id). A checkpoint still at (0, 0) starts from the
-- snapshot the inbox was registered in (start "now"), or from the beginning.
UPDATE herald_inboxes SET
    snap_from = CASE WHEN checkpoint_tx > 0 THEN format('%s:%s:', checkpoint_tx, checkpoint_tx)
                     ELSE COALESCE(start_snapshot, '1:1:') END,
    snap_to   = CASE WHEN checkpoint_tx > 0 THEN format('%s:%s:', checkpoint_tx + 1, checkpoint_tx + 1) END;

ALTER TABLE herald_inboxes ALTER COLUMN snap_from SET NOT NULL;
