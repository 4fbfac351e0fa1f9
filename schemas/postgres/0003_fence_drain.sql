-- understudy PostgreSQL schema 3: writers hold the fence open until they end.
--
-- The fence check is a plain read of us_state, so without this a transaction
-- could pass the check, the agent could fence, and the transaction could
-- still commit afterwards: a change the fenced active never reported as its
-- head (a switchover would hand over without it). Now every application
-- write statement first takes the transaction-level *shared* advisory lock
-- below; after the agent commits a fence it takes the same lock
-- *exclusively*, which waits until every transaction that passed the check
-- before the fence has committed or rolled back. Advisory locks live only in
-- memory (no WAL, no row lock on us_state), and a transaction re-taking a
-- lock it holds costs a hash lookup.
--
-- Lock key: 0x7573_6665_6e63_6501 ("usfence" + 1), scoped to this database.

CREATE OR REPLACE FUNCTION us_fence() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    s record;
BEGIN
    IF current_setting('understudy.applying', true) = 'on' THEN
        RETURN NULL;
    END IF;
    -- Before the read below, so the read sees any fence committed before
    -- this transaction joined the writers the agent waits for.
    PERFORM pg_advisory_xact_lock_shared(8463220710589031681);
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
