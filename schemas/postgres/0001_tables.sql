-- understudy PostgreSQL schema 1: application tables and agent tables.
--
-- Application tables (projects, jobs, keys) have the names and columns fixed
-- by the operator contract. JSON columns are `text`, not `jsonb`: jsonb
-- rewrites the text it stores and checksums must match SQLite byte for byte.
-- `updated_at` is milliseconds since the Unix epoch on both backends.
--
-- Agent tables carry the `us_` prefix. Row images in the staging table and the
-- change log are typed columns, one set shared by all three entities:
--
--   entity   key    t1           t2            t3          t4           t5          t6        t7            f1                f2                 content  updated_at
--   project  name   description  config
--   job      id     project      name          group_path  description  definition  schedule  owner_member  schedule_enabled  execution_enabled
--   key      path   kind         meta                                                                                                             content
--
-- entity: 1 project, 2 job, 3 key.  op: 1 upsert (full image), 2 delete (key only).

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

-- Staging: capture triggers write here in the application's transaction.
-- Rows become visible at commit; the sequencer moves them into us_changelog.
CREATE TABLE IF NOT EXISTS us_capture (
    id         bigserial PRIMARY KEY,
    epoch      bigint   NOT NULL,
    entity     smallint NOT NULL,
    op         smallint NOT NULL,
    key        text     NOT NULL,
    t1 text, t2 text, t3 text, t4 text, t5 text, t6 text, t7 text,
    f1 boolean, f2 boolean,
    content    bytea,
    updated_at bigint
);

-- The change log: committed, whole application transactions in commit order.
CREATE TABLE IF NOT EXISTS us_changelog (
    seq        bigint   PRIMARY KEY,
    epoch      bigint   NOT NULL,
    entity     smallint NOT NULL,
    op         smallint NOT NULL,
    key        text     NOT NULL,
    t1 text, t2 text, t3 text, t4 text, t5 text, t6 text, t7 text,
    f1 boolean, f2 boolean,
    content    bytea,
    updated_at bigint
);

-- The member's replication state: exactly one row.
CREATE TABLE IF NOT EXISTS us_state (
    id             smallint PRIMARY KEY CHECK (id = 1),
    cluster        text    NOT NULL,
    member         text    NOT NULL,
    role           text    NOT NULL CHECK (role IN ('active', 'passive', 'candidate', 'fenced', 'witness')),
    epoch          bigint  NOT NULL,
    active         text,
    pos_epoch      bigint  NOT NULL DEFAULT 0,
    pos_seq        bigint  NOT NULL DEFAULT 0,
    lease_until    bigint,
    vote_epoch     bigint,
    vote_candidate text,
    paused         boolean NOT NULL DEFAULT false
);

CREATE TABLE IF NOT EXISTS us_epoch_history (
    epoch       bigint PRIMARY KEY,
    active      text   NOT NULL,
    start_epoch bigint NOT NULL,
    start_seq   bigint NOT NULL,
    at_ms       bigint NOT NULL,
    reason      text   NOT NULL
);

-- Changes of a former active's divergent tail, kept for operators.
CREATE TABLE IF NOT EXISTS us_divergence (
    id             bigserial PRIMARY KEY,
    epoch          bigint   NOT NULL,
    seq            bigint   NOT NULL,
    entity         smallint NOT NULL,
    op             smallint NOT NULL,
    key            text     NOT NULL,
    t1 text, t2 text, t3 text, t4 text, t5 text, t6 text, t7 text,
    f1 boolean, f2 boolean,
    content        bytea,
    updated_at     bigint,
    quarantined_at bigint   NOT NULL DEFAULT (extract(epoch from clock_timestamp()) * 1000)::bigint,
    reason         text     NOT NULL,
    resolved       boolean  NOT NULL DEFAULT false
);
