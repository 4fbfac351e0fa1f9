-- understudy SQLite schema 5: the captured tables' schema history.
--
-- `understudy migrate` runs a schema change on the active in one
-- transaction with a schema-change entry in the change log (op 3); every
-- member applies that entry at its position. Each row here is one version
-- of the captured tables: the DDL each backend ran to get there and the
-- fingerprint the tables have afterwards. The schema version a member is
-- at is the largest version here (0 before any migration; the row of
-- version 0 is written with the first migration and holds the fingerprint
-- the tables had before it). `catalog` is the captured tables'
-- description at that version (JSON): change-log entries older than a
-- schema change are read with the description they were captured under.

CREATE TABLE us_app_schema (
    version      INTEGER PRIMARY KEY,
    fingerprint  TEXT NOT NULL,
    epoch        INTEGER NOT NULL,
    seq          INTEGER NOT NULL,
    sqlite_sql   TEXT NOT NULL,
    postgres_sql TEXT NOT NULL,
    catalog      TEXT NOT NULL,
    at_ms        INTEGER NOT NULL
);
