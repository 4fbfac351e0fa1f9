-- understudy SQLite schema 1: application tables, replication state, epoch
-- history, change log, capture triggers, project cascade, initial fence.
--
-- Runs inside one transaction opened by `understudy init`. Everything here is
-- plain SQL the sqlite3 3.40 shell understands too: applications may write
-- with any SQLite client, and the triggers run inside their transactions.
--
-- Times are integer milliseconds since the Unix epoch, computed as
--   CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)
-- (unixepoch('subsec') needs SQLite 3.42; older shells must read this schema).

-- ------------------------------------------------------------ application

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
    schedule_enabled  INTEGER NOT NULL DEFAULT 1 CHECK (schedule_enabled IN (0, 1)),
    execution_enabled INTEGER NOT NULL DEFAULT 1 CHECK (execution_enabled IN (0, 1)),
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

-- ------------------------------------------------------------ agent state

-- One row (id = 1). `applying` is 1 only inside the agent's own apply
-- transaction (SQLite has one writer, so no other transaction can see it).
CREATE TABLE us_state (
    id             INTEGER PRIMARY KEY CHECK (id = 1),
    cluster        TEXT NOT NULL,
    member         TEXT NOT NULL,
    role           TEXT NOT NULL,
    epoch          INTEGER NOT NULL,
    active         TEXT,
    pos_epoch      INTEGER NOT NULL DEFAULT 0,
    pos_seq        INTEGER NOT NULL DEFAULT 0,
    lease_until    INTEGER,
    vote_epoch     INTEGER,
    vote_candidate TEXT,
    paused         INTEGER NOT NULL DEFAULT 0,
    applying       INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE us_epoch_history (
    epoch       INTEGER PRIMARY KEY,
    active      TEXT NOT NULL,
    start_epoch INTEGER NOT NULL,
    start_seq   INTEGER NOT NULL,
    at_ms       INTEGER NOT NULL,
    reason      TEXT NOT NULL
);

-- The change log. AUTOINCREMENT: a seq is never reused, even after the
-- newest rows are trimmed. Images are typed columns (no JSON), by entity:
--   entity 1 projects: key = name, c1 description, c2 config, c3 updated_at
--   entity 2 jobs:     key = id, c1 project, c2 name, c3 group_path,
--                      c4 description, c5 definition, c6 schedule,
--                      c7 schedule_enabled, c8 execution_enabled,
--                      c9 owner_member, c10 updated_at
--   entity 3 keys:     key = path, c1 kind, c2 content, c3 meta, c4 updated_at
-- op 1 = upsert (image after), op 2 = delete (key only).
-- c1..c10 have no declared type so values keep their storage class.
CREATE TABLE us_changelog (
    seq    INTEGER PRIMARY KEY AUTOINCREMENT,
    epoch  INTEGER NOT NULL,
    entity INTEGER NOT NULL,
    op     INTEGER NOT NULL,
    key    TEXT NOT NULL,
    c1, c2, c3, c4, c5, c6, c7, c8, c9, c10
);

-- ------------------------------------------------------------ capture
-- One INSERT per row change, in the writer's transaction; the epoch comes
-- from the one-row state table; skipped while the agent applies.

CREATE TRIGGER us_capture_projects_ins AFTER INSERT ON projects BEGIN
    INSERT INTO us_changelog (epoch, entity, op, key, c1, c2, c3)
    SELECT epoch, 1, 1, NEW.name, NEW.description, NEW.config, NEW.updated_at
    FROM us_state WHERE applying = 0;
END;

CREATE TRIGGER us_capture_projects_upd AFTER UPDATE ON projects BEGIN
    INSERT INTO us_changelog (epoch, entity, op, key)
    SELECT epoch, 1, 2, OLD.name
    FROM us_state WHERE applying = 0 AND OLD.name IS NOT NEW.name;
    INSERT INTO us_changelog (epoch, entity, op, key, c1, c2, c3)
    SELECT epoch, 1, 1, NEW.name, NEW.description, NEW.config, NEW.updated_at
    FROM us_state WHERE applying = 0;
END;

-- Also the ON DELETE CASCADE of jobs, for writers that did not turn on
-- PRAGMA foreign_keys (the sqlite3 shell does not): the job deletes fire
-- their own capture triggers in this same transaction. On the agent's apply
-- path it repeats what the active did (its job deletes follow in the log).
CREATE TRIGGER us_capture_projects_del AFTER DELETE ON projects BEGIN
    INSERT INTO us_changelog (epoch, entity, op, key)
    SELECT epoch, 1, 2, OLD.name
    FROM us_state WHERE applying = 0;
    DELETE FROM jobs WHERE project = OLD.name;
END;

CREATE TRIGGER us_capture_jobs_ins AFTER INSERT ON jobs BEGIN
    INSERT INTO us_changelog (epoch, entity, op, key, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10)
    SELECT epoch, 2, 1, NEW.id, NEW.project, NEW.name, NEW.group_path, NEW.description,
           NEW.definition, NEW.schedule, NEW.schedule_enabled, NEW.execution_enabled,
           NEW.owner_member, NEW.updated_at
    FROM us_state WHERE applying = 0;
END;

CREATE TRIGGER us_capture_jobs_upd AFTER UPDATE ON jobs BEGIN
    INSERT INTO us_changelog (epoch, entity, op, key)
    SELECT epoch, 2, 2, OLD.id
    FROM us_state WHERE applying = 0 AND OLD.id IS NOT NEW.id;
    INSERT INTO us_changelog (epoch, entity, op, key, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10)
    SELECT epoch, 2, 1, NEW.id, NEW.project, NEW.name, NEW.group_path, NEW.description,
           NEW.definition, NEW.schedule, NEW.schedule_enabled, NEW.execution_enabled,
           NEW.owner_member, NEW.updated_at
    FROM us_state WHERE applying = 0;
END;

CREATE TRIGGER us_capture_jobs_del AFTER DELETE ON jobs BEGIN
    INSERT INTO us_changelog (epoch, entity, op, key)
    SELECT epoch, 2, 2, OLD.id
    FROM us_state WHERE applying = 0;
END;

CREATE TRIGGER us_capture_keys_ins AFTER INSERT ON keys BEGIN
    INSERT INTO us_changelog (epoch, entity, op, key, c1, c2, c3, c4)
    SELECT epoch, 3, 1, NEW.path, NEW.kind, NEW.content, NEW.meta, NEW.updated_at
    FROM us_state WHERE applying = 0;
END;

CREATE TRIGGER us_capture_keys_upd AFTER UPDATE ON keys BEGIN
    INSERT INTO us_changelog (epoch, entity, op, key)
    SELECT epoch, 3, 2, OLD.path
    FROM us_state WHERE applying = 0 AND OLD.path IS NOT NEW.path;
    INSERT INTO us_changelog (epoch, entity, op, key, c1, c2, c3, c4)
    SELECT epoch, 3, 1, NEW.path, NEW.kind, NEW.content, NEW.meta, NEW.updated_at
    FROM us_state WHERE applying = 0;
END;

CREATE TRIGGER us_capture_keys_del AFTER DELETE ON keys BEGIN
    INSERT INTO us_changelog (epoch, entity, op, key)
    SELECT epoch, 3, 2, OLD.path
    FROM us_state WHERE applying = 0;
END;

-- The fence triggers (us_fence_<table>_<op>, BEFORE each write) are created
-- and re-created by the agent with the member names written into their
-- messages (RAISE takes only a literal); see src/store/sqlite.
