-- understudy SQLite schema 2: the divergence quarantine.
--
-- When a former active rejoins, the changes it committed past the new
-- epoch's start position (its divergent tail) are copied here before its rows
-- are restored to match the new active. Nothing is lost silently: operators
-- list and export these rows. Images use the change log's layout (tbl, op, c0..).

CREATE TABLE us_quarantine (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    epoch          INTEGER NOT NULL,
    seq            INTEGER NOT NULL,
    tbl            TEXT NOT NULL,
    op             INTEGER NOT NULL,
    c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10,
    quarantined_at INTEGER NOT NULL
                   DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)),
    reason         TEXT NOT NULL,
    resolved       INTEGER NOT NULL DEFAULT 0
);

CREATE INDEX us_quarantine_unresolved ON us_quarantine(resolved, epoch, seq);
