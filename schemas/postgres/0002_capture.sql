-- understudy PostgreSQL schema 2: the fence and change capture.
--
-- Fence: BEFORE statement triggers (one check per statement, not per row)
-- refuse application writes unless this member is
-- active and its lease (database clock) has not run out.
-- Capture: AFTER row triggers stage every row change in us_capture and wake
-- the agent with NOTIFY (PostgreSQL folds repeated identical notifications of
-- one transaction into one, delivered at commit).
-- Both step aside inside the agent's apply transactions, which set the
-- transaction-local `understudy.applying = 'on'`.

CREATE OR REPLACE FUNCTION us_fence() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    s record;
BEGIN
    IF current_setting('understudy.applying', true) = 'on' THEN
        RETURN NULL;
    END IF;
    SELECT member, role, active, lease_until INTO s FROM us_state WHERE id = 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'understudy: write refused: this member has no replication state; run understudy init'
            USING ERRCODE = '25006';
    END IF;
    IF s.role <> 'active' THEN
        RAISE EXCEPTION 'understudy: write refused: member % is %; the active member is %',
            s.member, s.role, coalesce(s.active, 'unknown')
            USING ERRCODE = '25006';
    END IF;
    IF s.lease_until IS NOT NULL
       AND s.lease_until < (extract(epoch from clock_timestamp()) * 1000)::bigint THEN
        RAISE EXCEPTION 'understudy: write refused: the lease of this active member ran out (its agent is not renewing it); writes resume when the agent renews it or another member is promoted'
            USING ERRCODE = '25006';
    END IF;
    RETURN NULL;
END
$$;

-- TRUNCATE fires no row triggers, so it cannot be captured: refuse it always
-- (the apply path aside) rather than let members drift apart silently.
CREATE OR REPLACE FUNCTION us_refuse_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('understudy.applying', true) = 'on' THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'understudy: write refused: TRUNCATE of % cannot be replicated; use DELETE', TG_TABLE_NAME
        USING ERRCODE = '25006';
END
$$;

CREATE OR REPLACE FUNCTION us_capture_projects() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    e bigint;
BEGIN
    IF current_setting('understudy.applying', true) = 'on' THEN
        RETURN NULL;
    END IF;
    SELECT epoch INTO e FROM us_state WHERE id = 1;
    IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND OLD.name IS DISTINCT FROM NEW.name) THEN
        INSERT INTO us_capture (epoch, entity, op, key) VALUES (coalesce(e, 0), 1, 2, OLD.name);
    END IF;
    IF TG_OP <> 'DELETE' THEN
        INSERT INTO us_capture (epoch, entity, op, key, t1, t2, updated_at)
        VALUES (coalesce(e, 0), 1, 1, NEW.name, NEW.description, NEW.config, NEW.updated_at);
    END IF;
    PERFORM pg_notify('understudy', '');
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION us_capture_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    e bigint;
BEGIN
    IF current_setting('understudy.applying', true) = 'on' THEN
        RETURN NULL;
    END IF;
    SELECT epoch INTO e FROM us_state WHERE id = 1;
    IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND OLD.id IS DISTINCT FROM NEW.id) THEN
        INSERT INTO us_capture (epoch, entity, op, key) VALUES (coalesce(e, 0), 2, 2, OLD.id);
    END IF;
    IF TG_OP <> 'DELETE' THEN
        INSERT INTO us_capture (epoch, entity, op, key, t1, t2, t3, t4, t5, t6, t7, f1, f2, updated_at)
        VALUES (coalesce(e, 0), 2, 1, NEW.id, NEW.project, NEW.name, NEW.group_path, NEW.description,
                NEW.definition, NEW.schedule, NEW.owner_member, NEW.schedule_enabled,
                NEW.execution_enabled, NEW.updated_at);
    END IF;
    PERFORM pg_notify('understudy', '');
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION us_capture_keys() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    e bigint;
BEGIN
    IF current_setting('understudy.applying', true) = 'on' THEN
        RETURN NULL;
    END IF;
    SELECT epoch INTO e FROM us_state WHERE id = 1;
    IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND OLD.path IS DISTINCT FROM NEW.path) THEN
        INSERT INTO us_capture (epoch, entity, op, key) VALUES (coalesce(e, 0), 3, 2, OLD.path);
    END IF;
    IF TG_OP <> 'DELETE' THEN
        INSERT INTO us_capture (epoch, entity, op, key, t1, t2, content, updated_at)
        VALUES (coalesce(e, 0), 3, 1, NEW.path, NEW.kind, NEW.meta, NEW.content, NEW.updated_at);
    END IF;
    PERFORM pg_notify('understudy', '');
    RETURN NULL;
END
$$;

-- Row triggers of one event fire in name order, and the foreign key's
-- cascade actions are triggers named "RI_ConstraintTrigger_..." (byte order:
-- before "us_capture"): the deletes of a project's jobs are staged before the
-- project's own delete, an order valid for any replay, foreign keys on or off.
DROP TRIGGER IF EXISTS us_fence_write ON projects;
DROP TRIGGER IF EXISTS us_fence_truncate ON projects;
DROP TRIGGER IF EXISTS us_capture ON projects;
CREATE TRIGGER us_fence_write BEFORE INSERT OR UPDATE OR DELETE ON projects
    FOR EACH STATEMENT EXECUTE FUNCTION us_fence();
CREATE TRIGGER us_fence_truncate BEFORE TRUNCATE ON projects
    FOR EACH STATEMENT EXECUTE FUNCTION us_refuse_truncate();
CREATE TRIGGER us_capture AFTER INSERT OR UPDATE OR DELETE ON projects
    FOR EACH ROW EXECUTE FUNCTION us_capture_projects();

DROP TRIGGER IF EXISTS us_fence_write ON jobs;
DROP TRIGGER IF EXISTS us_fence_truncate ON jobs;
DROP TRIGGER IF EXISTS us_capture ON jobs;
CREATE TRIGGER us_fence_write BEFORE INSERT OR UPDATE OR DELETE ON jobs
    FOR EACH STATEMENT EXECUTE FUNCTION us_fence();
CREATE TRIGGER us_fence_truncate BEFORE TRUNCATE ON jobs
    FOR EACH STATEMENT EXECUTE FUNCTION us_refuse_truncate();
CREATE TRIGGER us_capture AFTER INSERT OR UPDATE OR DELETE ON jobs
    FOR EACH ROW EXECUTE FUNCTION us_capture_jobs();

DROP TRIGGER IF EXISTS us_fence_write ON keys;
DROP TRIGGER IF EXISTS us_fence_truncate ON keys;
DROP TRIGGER IF EXISTS us_capture ON keys;
CREATE TRIGGER us_fence_write BEFORE INSERT OR UPDATE OR DELETE ON keys
    FOR EACH STATEMENT EXECUTE FUNCTION us_fence();
CREATE TRIGGER us_fence_truncate BEFORE TRUNCATE ON keys
    FOR EACH STATEMENT EXECUTE FUNCTION us_refuse_truncate();
CREATE TRIGGER us_capture AFTER INSERT OR UPDATE OR DELETE ON keys
    FOR EACH ROW EXECUTE FUNCTION us_capture_keys();
