-- Fenced leases: every acquisition of an inbox's lease bumps its epoch, and renewals
-- and checkpoint writes must name the epoch they hold. A worker that stalled past
-- its lease can then neither take it back nor write a stale checkpoint.
ALTER TABLE herald_inboxes ADD COLUMN lease_epoch INTEGER NOT NULL DEFAULT 0;
