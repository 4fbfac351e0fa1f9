-- understudy PostgreSQL schema 1: agent tables.
--
-- (The example schema's tables are in example.sql, created by `init` when
-- the config has no [capture]; databases made by releases before schema 5
-- got them here, and migration 5 converts what those releases logged.)
--
-- Agent tables carry the `us_` prefix. The row-image columns below are the
-- format of schemas 1 to 4 (typed columns for projects, jobs and keys);
-- 0005_generic_tables.sql turns them into the one format of every captured
-- table (see that file).

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
