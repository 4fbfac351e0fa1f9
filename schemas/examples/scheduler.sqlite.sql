-- A scheduler-shaped fixture for SQLite, modelled on Rundeck's tables: the
-- application's own tables that understudy replicates through the generic
-- path ([capture]), for drills, integration tests and `bench` of that path.
-- It is NOT the example schema and `understudy init` does not create it: the
-- application (here: this file) creates its tables first, e.g.
--     sqlite3 data/a.db < schemas/examples/scheduler.sqlite.sql
-- then `understudy init` reads them and installs capture on them.
--
-- scheduler.postgres.sql is the same logical schema (same tables, column
-- names, column order, portable types and nullability), so the schema
-- fingerprints of SQLite and PostgreSQL members match.
--
-- The config that goes with it:
--
--   [capture]
--   tables = ["project", "scheduled_execution", "workflow", "workflow_step",
--             "workflow_workflow_step", "rdoption", "rdoption_values",
--             "notification", "storage"]
--   secret_columns = ["storage.data"]
--
--   [takeover]
--   table = "scheduled_execution"
--   owner_column = "server_nodeuuid"
--   owner_id = "<this member's server UUID>"   # default: the member id
--
-- What it covers: foreign keys three levels below project (project ->
-- scheduled_execution -> workflow -> workflow_step), ON DELETE CASCADE at
-- every level, two composite primary keys (workflow_workflow_step,
-- rdoption_values), a secret bytes column (storage.data), booleans,
-- numeric, real, uuid, json, date, timestamp and timestamptz columns, NULLs,
-- and every kind of generated id SQLite has: INTEGER PRIMARY KEY with
-- AUTOINCREMENT (scheduled_execution, workflow_step, notification, storage)
-- and plain rowid aliases (workflow, rdoption).
--
-- Every column says NULL or NOT NULL, key columns included: nullability is
-- part of the fingerprint, and PostgreSQL key columns are always NOT NULL.
-- SQLite enforces foreign keys only with `PRAGMA foreign_keys = ON` on the
-- writing connection; the application turns it on, as Rundeck would.
-- Plain DDL the sqlite3 3.40 shell runs; no defaults other than ids (the
-- application writes every value, in the portable encodings).

CREATE TABLE project (
    name        VARCHAR(255) NOT NULL PRIMARY KEY,
    description TEXT NULL,
    created     TIMESTAMP NOT NULL,
    retire_on   DATE NULL
);

CREATE TABLE scheduled_execution (
    id                INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    uuid              UUID NOT NULL UNIQUE,
    project           VARCHAR(255) NOT NULL REFERENCES project(name) ON DELETE CASCADE,
    job_name          VARCHAR(1024) NOT NULL,
    group_path        VARCHAR(2048) NULL,
    description       TEXT NULL,
    schedule_enabled  BOOLEAN NOT NULL,
    execution_enabled BOOLEAN NOT NULL,
    server_nodeuuid   VARCHAR(36) NULL,
    timeout           NUMERIC(10, 2) NULL,
    average_duration  REAL NULL,
    date_created      TIMESTAMPTZ NOT NULL,
    options           JSON NULL
);

CREATE INDEX scheduled_execution_project ON scheduled_execution(project);
CREATE INDEX scheduled_execution_owner ON scheduled_execution(server_nodeuuid);

CREATE TABLE workflow (
    id                     INTEGER NOT NULL PRIMARY KEY,
    scheduled_execution_id BIGINT NOT NULL
                           REFERENCES scheduled_execution(id) ON DELETE CASCADE,
    keepgoing              BOOLEAN NOT NULL,
    strategy               VARCHAR(256) NOT NULL,
    threadcount            INTEGER NULL
);

CREATE INDEX workflow_job ON workflow(scheduled_execution_id);

CREATE TABLE workflow_step (
    id                   INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    workflow_id          BIGINT NOT NULL REFERENCES workflow(id) ON DELETE CASCADE,
    step_number          INTEGER NOT NULL,
    step_type            VARCHAR(255) NOT NULL,
    description          TEXT NULL,
    keepgoing_on_success BOOLEAN NOT NULL,
    adhoc_remote_string  TEXT NULL,
    json_data            JSON NULL
);

CREATE INDEX workflow_step_workflow ON workflow_step(workflow_id);

-- Composite key; two parents, both cascading.
CREATE TABLE workflow_workflow_step (
    workflow_id  BIGINT NOT NULL REFERENCES workflow(id) ON DELETE CASCADE,
    step_id      BIGINT NOT NULL REFERENCES workflow_step(id) ON DELETE CASCADE,
    commands_idx INTEGER NOT NULL,
    PRIMARY KEY (workflow_id, step_id)
);

CREATE TABLE rdoption (
    id                     INTEGER NOT NULL PRIMARY KEY,
    scheduled_execution_id BIGINT NOT NULL
                           REFERENCES scheduled_execution(id) ON DELETE CASCADE,
    name                   VARCHAR(255) NOT NULL,
    required               BOOLEAN NOT NULL,
    default_value          TEXT NULL,
    sort_index             INTEGER NOT NULL
);

CREATE INDEX rdoption_job ON rdoption(scheduled_execution_id);

-- Composite key with a text part.
CREATE TABLE rdoption_values (
    rdoption_id BIGINT NOT NULL REFERENCES rdoption(id) ON DELETE CASCADE,
    value       VARCHAR(2048) NOT NULL,
    sort_index  INTEGER NOT NULL,
    PRIMARY KEY (rdoption_id, value)
);

CREATE TABLE notification (
    id                     INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    scheduled_execution_id BIGINT NOT NULL
                           REFERENCES scheduled_execution(id) ON DELETE CASCADE,
    event_trigger          VARCHAR(255) NOT NULL,
    type                   VARCHAR(255) NOT NULL,
    content                TEXT NULL
);

CREATE INDEX notification_job ON notification(scheduled_execution_id);

-- Key storage and project configuration (Rundeck keeps both here). `data`
-- holds key material: the secret column.
CREATE TABLE storage (
    id           INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    namespace    VARCHAR(255) NULL,
    dir          VARCHAR(2048) NOT NULL,
    name         VARCHAR(1024) NOT NULL,
    data         BLOB NULL,
    json_data    TEXT NULL,
    last_updated TIMESTAMPTZ NOT NULL,
    UNIQUE (namespace, dir, name)
);
