-- understudy PostgreSQL schema 5: one row format for every captured table.
--
-- Schemas 1 to 4 captured only the example tables, with typed image columns
-- per entity (entity 1 projects, 2 jobs, 3 keys; key, t1..t7, f1, f2,
-- content, updated_at). From here on the staging table, the change log and
-- the quarantine hold any captured table's rows as
--
--   tbl  the table's name as every member spells it (`x` for public.x,
--        `schema.x` otherwise)
--   op   1 upsert (the whole row after the change), 2 delete (the key only)
--   i int8[], r float8[], b bool[], t text[], x bytea[]
--        the image's values, each in the array of its column's carrier
--        (i: integers, dates as days since 1970-01-01, timestamps as
--        microseconds since 1970-01-01 00:00:00, UTC for timestamptz;
--        r: floating point; b: booleans; t: text, numeric, json, uuid;
--        x: bytea), in the table's image layout (primary-key columns in key
--        order, then the other columns in table order) within each array,
--        NULL elements for NULL values, NULL for a carrier the table does
--        not use.
--
-- Existing rows are converted with the example tables' image layouts:
--   projects: t = [name, description, config], i = [updated_at]
--   jobs:     t = [id, project, name, group_path, description, definition,
--                  schedule, owner_member], b = [schedule_enabled,
--                  execution_enabled], i = [updated_at]
--   keys:     t = [path, kind, meta], x = [content], i = [updated_at]
--   a delete: t = [key]
--
-- The fixed capture functions of schemas 2 to 4 go (with their triggers);
-- `init` generates each captured table's own right after this file runs, in
-- the same transaction, so no write slips through uncaptured.

DROP FUNCTION IF EXISTS us_capture_projects() CASCADE;
DROP FUNCTION IF EXISTS us_capture_jobs() CASCADE;
DROP FUNCTION IF EXISTS us_capture_keys() CASCADE;

-- One change-log row as the agent sends a batch of them (an array of this
-- type: the rows' arrays differ in length, so per-column arrays cannot
-- carry them).
CREATE TYPE us_change AS (
    seq   bigint,
    epoch bigint,
    tbl   text,
    op    smallint,
    i     bigint[],
    r     double precision[],
    b     boolean[],
    t     text[],
    x     bytea[]
);

ALTER TABLE us_capture
    ADD COLUMN tbl text, ADD COLUMN i bigint[], ADD COLUMN r double precision[],
    ADD COLUMN b boolean[], ADD COLUMN t text[], ADD COLUMN x bytea[];
ALTER TABLE us_changelog
    ADD COLUMN tbl text, ADD COLUMN i bigint[], ADD COLUMN r double precision[],
    ADD COLUMN b boolean[], ADD COLUMN t text[], ADD COLUMN x bytea[];
ALTER TABLE us_divergence
    ADD COLUMN tbl text, ADD COLUMN i bigint[], ADD COLUMN r double precision[],
    ADD COLUMN b boolean[], ADD COLUMN t text[], ADD COLUMN x bytea[];

UPDATE us_capture SET
    tbl = CASE entity WHEN 1 THEN 'projects' WHEN 2 THEN 'jobs' WHEN 3 THEN 'keys' END,
    i = CASE WHEN op = 1 THEN ARRAY[updated_at] END,
    b = CASE WHEN op = 1 AND entity = 2 THEN ARRAY[f1, f2] END,
    t = CASE WHEN op <> 1 THEN ARRAY[key]
             WHEN entity = 2 THEN ARRAY[key, t1, t2, t3, t4, t5, t6, t7]
             ELSE ARRAY[key, t1, t2] END,
    x = CASE WHEN op = 1 AND entity = 3 THEN ARRAY[content] END;
UPDATE us_changelog SET
    tbl = CASE entity WHEN 1 THEN 'projects' WHEN 2 THEN 'jobs' WHEN 3 THEN 'keys' END,
    i = CASE WHEN op = 1 THEN ARRAY[updated_at] END,
    b = CASE WHEN op = 1 AND entity = 2 THEN ARRAY[f1, f2] END,
    t = CASE WHEN op <> 1 THEN ARRAY[key]
             WHEN entity = 2 THEN ARRAY[key, t1, t2, t3, t4, t5, t6, t7]
             ELSE ARRAY[key, t1, t2] END,
    x = CASE WHEN op = 1 AND entity = 3 THEN ARRAY[content] END;
UPDATE us_divergence SET
    tbl = CASE entity WHEN 1 THEN 'projects' WHEN 2 THEN 'jobs' WHEN 3 THEN 'keys' END,
    i = CASE WHEN op = 1 THEN ARRAY[updated_at] END,
    b = CASE WHEN op = 1 AND entity = 2 THEN ARRAY[f1, f2] END,
    t = CASE WHEN op <> 1 THEN ARRAY[key]
             WHEN entity = 2 THEN ARRAY[key, t1, t2, t3, t4, t5, t6, t7]
             ELSE ARRAY[key, t1, t2] END,
    x = CASE WHEN op = 1 AND entity = 3 THEN ARRAY[content] END;

-- An unknown entity leaves tbl NULL: SET NOT NULL then fails and the whole
-- upgrade rolls back, rather than lose a change.
ALTER TABLE us_capture
    ALTER COLUMN tbl SET NOT NULL,
    DROP COLUMN entity, DROP COLUMN key,
    DROP COLUMN t1, DROP COLUMN t2, DROP COLUMN t3, DROP COLUMN t4, DROP COLUMN t5,
    DROP COLUMN t6, DROP COLUMN t7, DROP COLUMN f1, DROP COLUMN f2,
    DROP COLUMN content, DROP COLUMN updated_at;
ALTER TABLE us_changelog
    ALTER COLUMN tbl SET NOT NULL,
    DROP COLUMN entity, DROP COLUMN key,
    DROP COLUMN t1, DROP COLUMN t2, DROP COLUMN t3, DROP COLUMN t4, DROP COLUMN t5,
    DROP COLUMN t6, DROP COLUMN t7, DROP COLUMN f1, DROP COLUMN f2,
    DROP COLUMN content, DROP COLUMN updated_at;
ALTER TABLE us_divergence
    ALTER COLUMN tbl SET NOT NULL,
    DROP COLUMN entity, DROP COLUMN key,
    DROP COLUMN t1, DROP COLUMN t2, DROP COLUMN t3, DROP COLUMN t4, DROP COLUMN t5,
    DROP COLUMN t6, DROP COLUMN t7, DROP COLUMN f1, DROP COLUMN f2,
    DROP COLUMN content, DROP COLUMN updated_at;
