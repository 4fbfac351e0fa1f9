-- understudy PostgreSQL schema 6: the captured tables' schema history.
--
-- As SQLite schema 5: `understudy migrate` runs a schema change on the
-- active in one transaction with a schema-change entry in the change log,
-- and every member applies that entry at its position. Each row here is one
-- version of the captured tables: the DDL each backend ran to get there,
-- the fingerprint the tables have afterwards, the position of the entry,
-- and the tables' description (JSON) that change-log entries captured
-- under this version are read with. The version a member is at is the
-- largest here (0 before any migration; version 0's row is written with
-- the first migration and describes the tables before it).
--
-- A schema-change entry in us_changelog, us_capture or us_divergence:
-- tbl '', op 3, i = [version], t = [SQLite DDL, PostgreSQL DDL,
-- fingerprint].

CREATE TABLE us_app_schema (
    version      bigint PRIMARY KEY,
    fingerprint  text   NOT NULL,
    epoch        bigint NOT NULL,
    seq          bigint NOT NULL,
    sqlite_sql   text   NOT NULL,
    postgres_sql text   NOT NULL,
    catalog      text   NOT NULL,
    at_ms        bigint NOT NULL
);
