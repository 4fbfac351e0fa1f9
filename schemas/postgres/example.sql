-- The example schema (projects, jobs, keys), modelled on Rundeck's and used
-- by drills, benchmarks and the standard workload. `understudy init` creates
-- it when the config has no [capture] section; an application with tables of
-- its own lists them in [capture] instead. Idempotent.
--
-- Captured like any application's tables: the agent reads these from the
-- catalog and generates their capture and fence triggers. JSON columns are
-- `text`, not `jsonb`: jsonb rewrites the text it stores and checksums must
-- match SQLite byte for byte. `updated_at` is milliseconds since the Unix
-- epoch on both backends. (Schemas 1 to 4 created these tables in
-- 0001_tables.sql, with exactly these columns.)

CREATE TABLE IF NOT EXISTS projects (
    name        text PRIMARY KEY,
    description text,
    config      text,
    updated_at  bigint NOT NULL DEFAULT (extract(epoch from clock_timestamp()) * 1000)::bigint
);

CREATE TABLE IF NOT EXISTS jobs (
    id                text PRIMARY KEY,
    project           text NOT NULL REFERENCES projects(name) ON DELETE CASCADE,
    name              text NOT NULL,
    group_path        text,
    description       text,
    definition        text,
    schedule          text NULL,
    schedule_enabled  boolean NOT NULL DEFAULT true,
    execution_enabled boolean NOT NULL DEFAULT true,
    owner_member      text NULL,
    updated_at        bigint NOT NULL DEFAULT (extract(epoch from clock_timestamp()) * 1000)::bigint
);

CREATE INDEX IF NOT EXISTS jobs_project_idx ON jobs (project);

CREATE TABLE IF NOT EXISTS keys (
    path       text PRIMARY KEY,
    kind       text NOT NULL CHECK (kind IN ('password', 'private', 'public')),
    content    bytea NOT NULL,
    meta       text,
    updated_at bigint NOT NULL DEFAULT (extract(epoch from clock_timestamp()) * 1000)::bigint
);
