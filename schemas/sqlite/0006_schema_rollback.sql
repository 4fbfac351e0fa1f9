-- understudy SQLite schema 6: schema changes a member must give back.
--
-- A former active may have run a schema change the cluster never received
-- (it lost its role before any member got the entry). When it rejoins, its
-- divergent tail goes to the quarantine as always, and its captured tables
-- go back to the version the cluster's history has at the kept position:
--
--   us_app_schema.restore_sql  this member's own definitions of the
--       captured tables just before the change ran (JSON: the
--       `sqlite_master` statements of the tables, their indexes and the
--       application's triggers on them, in creation order). NULL for
--       changes recorded before schema 6: those are not given back by
--       the agent (the rejoin says so).
--   us_quarantine.catalog_id   for rows quarantined together with a schema
--       change, the tables they were captured under
--       (us_quarantine_catalog), since those are in no version of the
--       history any more.

ALTER TABLE us_app_schema ADD COLUMN restore_sql TEXT;

CREATE TABLE us_quarantine_catalog (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    catalog TEXT NOT NULL
);

ALTER TABLE us_quarantine ADD COLUMN catalog_id INTEGER REFERENCES us_quarantine_catalog(id);
