-- The example schema (projects, jobs, keys), modelled on Rundeck's and used
-- by drills, benchmarks and the standard workload. `understudy init` creates
-- it when the config has no [capture] section; an application with tables
-- of its own lists them in [capture] instead. Idempotent.
--
-- Captured like any application's tables: the agent reads these from the
-- catalog and generates their capture, cascade and fence triggers.
-- Column types are declared so they map to the same portable types as the
-- PostgreSQL example schema (BOOLEAN -> bool), which mixed clusters need.

CREATE TABLE IF NOT EXISTS projects (
    name        TEXT NOT NULL PRIMARY KEY,
    description TEXT,
    config      TEXT,
    updated_at  INTEGER NOT NULL
                DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER))
                CHECK (typeof(updated_at) = 'integer')
);

CREATE TABLE IF NOT EXISTS jobs (
    id                TEXT NOT NULL PRIMARY KEY,
    project           TEXT NOT NULL REFERENCES projects(name) ON DELETE CASCADE,
    name              TEXT NOT NULL,
    group_path        TEXT,
    description       TEXT,
    definition        TEXT,
    schedule          TEXT NULL,
    schedule_enabled  BOOLEAN NOT NULL DEFAULT 1 CHECK (schedule_enabled IN (0, 1)),
    execution_enabled BOOLEAN NOT NULL DEFAULT 1 CHECK (execution_enabled IN (0, 1)),
    owner_member      TEXT NULL,
    updated_at        INTEGER NOT NULL
                      DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER))
                      CHECK (typeof(updated_at) = 'integer')
);

CREATE INDEX IF NOT EXISTS us_jobs_project ON jobs(project);

CREATE TABLE IF NOT EXISTS keys (
    path       TEXT NOT NULL PRIMARY KEY,
    kind       TEXT NOT NULL CHECK (kind IN ('password', 'private', 'public')),
    content    BLOB NOT NULL,
    meta       TEXT,
    updated_at INTEGER NOT NULL
               DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER))
               CHECK (typeof(updated_at) = 'integer')
);
