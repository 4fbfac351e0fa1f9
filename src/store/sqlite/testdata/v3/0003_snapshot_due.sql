-- understudy SQLite schema 3: a snapshot owed after a quarantine.
--
-- A rejoining member quarantines its divergent tail and rewinds its change
-- log in one transaction, but the rows that tail changed are only restored
-- by the snapshot that follows. A row here (written in the quarantine's
-- transaction, deleted in the snapshot install's) makes an agent that was
-- stopped in between ask for that snapshot when it starts again.

CREATE TABLE us_snapshot_due (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    reason TEXT NOT NULL,
    at_ms  INTEGER NOT NULL
);
