-- opskit: no-transaction
SET lock_timeout = '500ms';  -- below deadlock_timeout (1s): the migration gives way
SET statement_timeout = '1h';

-- phase1_backfill_data: fill the denormalized relations of phase1 from the truth, batch by
-- batch of user ids, while the app keeps writing. The triggers of phase1_denormalized_tables
-- already run (they were created in the previous phase), so every write from now on is
-- recorded as a delta (dashboard, intros) or applied to its conversation rows.
--
-- Per batch functions (the runner may call them one batch per transaction; lo inclusive, hi
-- exclusive; each returns the number of rows written):
--   opskit_backfill_project_stats(lo, hi)            project ids  (project_stats, hence
--                                                                  user_dashboard_stats' counts
--                                                                  of projects and received)
--   opskit_backfill_owner_totals(lo, hi)             user ids     (owner totals: projects_count
--                                                                  and the folded *_received)
--   opskit_backfill_user_columns(lo, hi)             user ids     (its per-user columns)
--   opskit_backfill_user_dashboard_stats(lo, hi)     user ids     (both, for the users' own
--                                                                  projects: a targeted repair)
--   opskit_backfill_intro_request_stats(lo, hi)      user ids
--   opskit_backfill_message_conversations(lo, hi)    user ids
-- and opskit_backfill_plan(batch_size, messages_per_batch) plans the batches of every id, which
-- the procedure opskit_backfill_queued(steps) runs, one batch per transaction, in as many
-- sessions as call it.
--
-- Why a write racing the backfill is neither lost nor counted twice
--
-- Delta relations (user_dashboard_stats with project_stats, intro_request_stats; relation =
-- base + pending deltas).
--   1. Take the relation's advisory lock exclusively: it waits for running folds to commit and
--      makes new folds return 0 until we commit. From now on nobody but us changes base rows,
--      and pending delta rows are only ever added (writers) - the fold is the only other
--      remover, the users trigger removes (or, in project_stats_delta, detaches the voter of)
--      those of deleted users, see 2.
--   2. Lock the batch's users FOR KEY SHARE (id order): none of them can be deleted (and their
--      base/delta rows removed) until we commit; a delete in progress is waited for. Project
--      batches need no row lock: nothing but the fold removes project deltas, and a project
--      deleted after our snapshot only leaves a base row project_stats ignores.
--   3. In ONE statement, hence one snapshot S, compute truth(S) and the sum of the delta rows
--      visible in S, and write base := truth(S) - deltas(S). A user's votes_cast deltas are
--      the user_dashboard_stats_delta rows plus the project_stats_delta rows with that voter.
--   A transaction is either committed in S - then its app rows are in truth(S) and its delta
--   rows in deltas(S) - or not - then neither is, and its delta rows are added by the view once
--   it commits. So after we commit, base + all pending deltas = truth(S) + the deltas of the
--   transactions committed after S = the truth, exactly, whatever the interleaving; nothing
--   depends on what base held before (a rerun is harmless).
--   The functions refuse to run outside READ COMMITTED: 3 needs a snapshot taken after the
--   locks of 1 and 2.
--
-- message_conversations_denorm (plain table, every row correct from its creation, see phase1).
--   The batch locks (or creates as placeholders) every row with user_id in the batch that has a
--   message or a row, in key order like the trigger does, then - in a new statement, so with a
--   snapshot taken after the locks - recomputes those rows in full from messages and deletes
--   those without messages. Any transaction that changed messages of such a pair either
--   committed before we got the lock (its change is in our snapshot) or is waiting for our
--   lock with its change invisible to us, and applies it on top of our result afterwards.
--   Pairs that get their first message after we listed the keys are created, complete, by
--   the trigger.

-- ------------------------------------------------------------------ truth per batch
-- STABLE: evaluated with the snapshot of the statement that calls it.

-- The per-user columns (projects_count and the *_received columns come from project_stats).
CREATE OR REPLACE FUNCTION opskit_truth_user_dashboard_stats(lo bigint, hi bigint)
RETURNS TABLE (
    user_id bigint, votes_cast bigint, followers_count bigint, following_count bigint,
    unread_messages bigint, pending_intros_received bigint)
LANGUAGE sql
STABLE
AS $fn$
    SELECT u.id, coalesce(vc.n, 0), coalesce(fr.n, 0), coalesce(fg.n, 0), coalesce(um.n, 0),
           coalesce(pi.n, 0)
    FROM users u
    LEFT JOIN (
        SELECT v.user_id, count(*) AS n FROM votes v
        WHERE v.user_id >= lo AND v.user_id < hi GROUP BY v.user_id
    ) vc ON vc.user_id = u.id
    LEFT JOIN (
        SELECT followee_id, count(*) AS n FROM follows
        WHERE followee_id >= lo AND followee_id < hi GROUP BY followee_id
    ) fr ON fr.followee_id = u.id
    LEFT JOIN (
        SELECT follower_id, count(*) AS n FROM follows
        WHERE follower_id >= lo AND follower_id < hi GROUP BY follower_id
    ) fg ON fg.follower_id = u.id
    LEFT JOIN (
        SELECT recipient_id, count(*) AS n FROM messages
        WHERE recipient_id >= lo AND recipient_id < hi AND read_at IS NULL
        GROUP BY recipient_id
    ) um ON um.recipient_id = u.id
    LEFT JOIN (
        SELECT target_id, count(*) AS n FROM intro_requests
        WHERE target_id >= lo AND target_id < hi AND status = 'pending'
        GROUP BY target_id
    ) pi ON pi.target_id = u.id
    WHERE u.id >= lo AND u.id < hi
$fn$;

CREATE OR REPLACE FUNCTION opskit_truth_intro_request_stats(lo bigint, hi bigint)
RETURNS TABLE (
    user_id bigint, sent_total bigint, sent_pending bigint, sent_accepted bigint,
    sent_declined bigint, received_total bigint, received_pending bigint,
    received_accepted bigint, received_declined bigint)
LANGUAGE sql
STABLE
AS $fn$
    SELECT u.id,
           coalesce(s.total, 0), coalesce(s.pending, 0), coalesce(s.accepted, 0),
           coalesce(s.declined, 0),
           coalesce(r.total, 0), coalesce(r.pending, 0), coalesce(r.accepted, 0),
           coalesce(r.declined, 0)
    FROM users u
    LEFT JOIN (
        SELECT requester_id, count(*) AS total,
               count(*) FILTER (WHERE status = 'pending') AS pending,
               count(*) FILTER (WHERE status = 'accepted') AS accepted,
               count(*) FILTER (WHERE status = 'declined') AS declined
        FROM intro_requests
        WHERE requester_id >= lo AND requester_id < hi
        GROUP BY requester_id
    ) s ON s.requester_id = u.id
    LEFT JOIN (
        SELECT target_id, count(*) AS total,
               count(*) FILTER (WHERE status = 'pending') AS pending,
               count(*) FILTER (WHERE status = 'accepted') AS accepted,
               count(*) FILTER (WHERE status = 'declined') AS declined
        FROM intro_requests
        WHERE target_id >= lo AND target_id < hi
        GROUP BY target_id
    ) r ON r.target_id = u.id
    WHERE u.id >= lo AND u.id < hi
$fn$;

-- ------------------------------------------------------------------ per batch backfill

-- The projects `ids`: upvotes, downvotes and comments of each (soft-deleted ones too). The
-- caller holds the advisory lock. Projects created after the phase1 triggers got their base row
-- from the projects trigger (every vote and comment they ever had is a delta), so an id list
-- read a moment earlier than this statement's snapshot misses nothing that matters. A base row
-- a projects trigger holds is waited for. The owner totals follow the new folded counts only
-- when opskit_backfill_owner_totals runs next (the full backfill and the repair both do).
CREATE OR REPLACE FUNCTION opskit_backfill_projects(ids bigint[])
RETURNS bigint
LANGUAGE sql
AS $fn$
    WITH truth AS (
        SELECT p.id AS project_id,
               coalesce(v.up, 0) AS upvotes, coalesce(v.down, 0) AS downvotes,
               coalesce(c.n, 0) AS comments
        FROM projects p
        LEFT JOIN (
            SELECT project_id,
                   count(*) FILTER (WHERE vote_type = 'up') AS up,
                   count(*) FILTER (WHERE vote_type = 'down') AS down
            FROM votes WHERE project_id = ANY (ids)
            GROUP BY project_id
        ) v ON v.project_id = p.id
        LEFT JOIN (
            SELECT project_id, count(*) AS n
            FROM comments WHERE project_id = ANY (ids)
            GROUP BY project_id
        ) c ON c.project_id = p.id
        WHERE p.id = ANY (ids)
    ), pending AS (
        SELECT d.project_id, sum(d.upvotes) AS upvotes, sum(d.downvotes) AS downvotes,
               sum(d.comments) AS comments
        FROM project_stats_delta d
        WHERE d.project_id = ANY (ids)
        GROUP BY d.project_id
    ), upserted AS (
        INSERT INTO project_stats_base AS b (project_id, upvotes, downvotes, comments)
        SELECT t.project_id,
               t.upvotes - coalesce(p.upvotes, 0),
               t.downvotes - coalesce(p.downvotes, 0),
               t.comments - coalesce(p.comments, 0)
        FROM truth t
        LEFT JOIN pending p ON p.project_id = t.project_id
        ORDER BY t.project_id
        ON CONFLICT (project_id) DO UPDATE SET
            upvotes = EXCLUDED.upvotes,
            downvotes = EXCLUDED.downvotes,
            comments = EXCLUDED.comments
        RETURNING 1
    )
    SELECT count(*) FROM upserted
$fn$;

-- Projects lo <= id < hi (the full backfill's batches of project_stats).
CREATE OR REPLACE FUNCTION opskit_backfill_project_stats(lo bigint, hi bigint)
RETURNS bigint
LANGUAGE plpgsql
AS $fn$
DECLARE
    written bigint;
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'opskit_backfill_project_stats must run in READ COMMITTED';
    END IF;
    PERFORM pg_advisory_xact_lock(1869640555, 11);
    written := opskit_backfill_projects(
        ARRAY(SELECT id FROM projects WHERE id >= lo AND id < hi ORDER BY id));
    -- Base rows of hard-deleted projects (project_stats ignores them).
    DELETE FROM project_stats_base b
    WHERE b.project_id >= lo AND b.project_id < hi
      AND NOT EXISTS (SELECT 1 FROM projects p WHERE p.id = b.project_id);
    RETURN written;
END
$fn$;

-- Users lo <= id < hi: the per-user columns of user_dashboard_stats (the full backfill's user
-- batches, after the project batches).
CREATE OR REPLACE FUNCTION opskit_backfill_user_columns(lo bigint, hi bigint)
RETURNS bigint
LANGUAGE plpgsql
AS $fn$
DECLARE
    written bigint;
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'opskit_backfill_user_columns must run in READ COMMITTED';
    END IF;
    PERFORM pg_advisory_xact_lock(1869640555, 11);
    PERFORM 1 FROM users WHERE id >= lo AND id < hi ORDER BY id FOR KEY SHARE;

    WITH pending AS (
        SELECT m.user_id,
               sum(m.votes_cast) AS votes_cast,
               sum(m.followers_count) AS followers_count,
               sum(m.following_count) AS following_count,
               sum(m.unread_messages) AS unread_messages,
               sum(m.pending_intros_received) AS pending_intros_received
        FROM (
            SELECT d.user_id, d.votes_cast, d.followers_count, d.following_count,
                   d.unread_messages, d.pending_intros_received
            FROM user_dashboard_stats_delta d
            WHERE d.user_id >= lo AND d.user_id < hi
            UNION ALL
            SELECT pd.voter_id, pd.upvotes + pd.downvotes, 0, 0, 0, 0
            FROM project_stats_delta pd
            WHERE pd.voter_id >= lo AND pd.voter_id < hi
        ) AS m
        GROUP BY m.user_id
    ), upserted AS (
        INSERT INTO user_dashboard_stats_base AS b (
            user_id, votes_cast, followers_count, following_count, unread_messages,
            pending_intros_received)
        SELECT t.user_id,
               t.votes_cast - coalesce(p.votes_cast, 0),
               t.followers_count - coalesce(p.followers_count, 0),
               t.following_count - coalesce(p.following_count, 0),
               t.unread_messages - coalesce(p.unread_messages, 0),
               t.pending_intros_received - coalesce(p.pending_intros_received, 0)
        FROM opskit_truth_user_dashboard_stats(lo, hi) t
        LEFT JOIN pending p ON p.user_id = t.user_id
        ORDER BY t.user_id
        ON CONFLICT (user_id) DO UPDATE SET
            votes_cast = EXCLUDED.votes_cast,
            followers_count = EXCLUDED.followers_count,
            following_count = EXCLUDED.following_count,
            unread_messages = EXCLUDED.unread_messages,
            pending_intros_received = EXCLUDED.pending_intros_received
        RETURNING 1
    )
    SELECT count(*) INTO written FROM upserted;

    -- Base rows of users that no longer exist (none unless left by an older run).
    DELETE FROM user_dashboard_stats_base b
    WHERE b.user_id >= lo AND b.user_id < hi
      AND NOT EXISTS (SELECT 1 FROM users u WHERE u.id = b.user_id);
    RETURN written;
END
$fn$;

-- Users lo <= id < hi: their owner totals (phase1 section 5), after the project batches: the
-- count of their live projects and the sums of those projects' FOLDED counts
-- (project_stats_base), minus the owner-total deltas pending in the same snapshot. Exact for the
-- same reason as the other batches: with the advisory lock no fold changes a folded count or a
-- base row, and a projects trigger that moved counts of an owner in the batch either committed
-- in our snapshot (its project state and its deltas are both in it) or not (neither is; it read
-- the folded counts we read: it held the project's base row from then to its commit).
CREATE OR REPLACE FUNCTION opskit_backfill_owner_totals(lo bigint, hi bigint)
RETURNS bigint
LANGUAGE plpgsql
AS $fn$
DECLARE
    written bigint;
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'opskit_backfill_owner_totals must run in READ COMMITTED';
    END IF;
    PERFORM pg_advisory_xact_lock(1869640555, 11);
    PERFORM 1 FROM users WHERE id >= lo AND id < hi ORDER BY id FOR KEY SHARE;

    WITH owned AS (
        SELECT p.owner_id AS user_id, count(*) AS projects_count,
               coalesce(sum(b.upvotes), 0) AS upvotes_received,
               coalesce(sum(b.downvotes), 0) AS downvotes_received,
               coalesce(sum(b.comments), 0) AS comments_received
        FROM projects p
        LEFT JOIN project_stats_base b ON b.project_id = p.id
        WHERE p.owner_id >= lo AND p.owner_id < hi AND p.deleted_at IS NULL
        GROUP BY p.owner_id
    ), pending AS (
        SELECT d.user_id, sum(d.projects_count) AS projects_count,
               sum(d.upvotes_received) AS upvotes_received,
               sum(d.downvotes_received) AS downvotes_received,
               sum(d.comments_received) AS comments_received
        FROM user_dashboard_stats_delta d
        WHERE d.user_id >= lo AND d.user_id < hi
        GROUP BY d.user_id
    ), upserted AS (
        INSERT INTO user_dashboard_stats_base AS b (
            user_id, projects_count, upvotes_received, downvotes_received, comments_received)
        SELECT u.id,
               coalesce(o.projects_count, 0) - coalesce(d.projects_count, 0),
               coalesce(o.upvotes_received, 0) - coalesce(d.upvotes_received, 0),
               coalesce(o.downvotes_received, 0) - coalesce(d.downvotes_received, 0),
               coalesce(o.comments_received, 0) - coalesce(d.comments_received, 0)
        FROM users u
        LEFT JOIN owned o ON o.user_id = u.id
        LEFT JOIN pending d ON d.user_id = u.id
        WHERE u.id >= lo AND u.id < hi
        ORDER BY u.id
        ON CONFLICT (user_id) DO UPDATE SET
            projects_count = EXCLUDED.projects_count,
            upvotes_received = EXCLUDED.upvotes_received,
            downvotes_received = EXCLUDED.downvotes_received,
            comments_received = EXCLUDED.comments_received
        RETURNING 1
    )
    SELECT count(*) INTO written FROM upserted;
    RETURN written;
END
$fn$;

-- Users lo <= id < hi: makes their user_dashboard_stats rows equal the truth, i.e. the per-user
-- columns and the projects they own (a targeted repair, e.g. by `opskit reconcile --fix`).
-- Returns the user rows written.
CREATE OR REPLACE FUNCTION opskit_backfill_user_dashboard_stats(lo bigint, hi bigint)
RETURNS bigint
LANGUAGE plpgsql
AS $fn$
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'opskit_backfill_user_dashboard_stats must run in READ COMMITTED';
    END IF;
    PERFORM pg_advisory_xact_lock(1869640555, 11);
    PERFORM opskit_backfill_projects(
        ARRAY(SELECT id FROM projects WHERE owner_id >= lo AND owner_id < hi ORDER BY id));
    PERFORM opskit_backfill_owner_totals(lo, hi);
    RETURN opskit_backfill_user_columns(lo, hi);
END
$fn$;

CREATE OR REPLACE FUNCTION opskit_backfill_intro_request_stats(lo bigint, hi bigint)
RETURNS bigint
LANGUAGE plpgsql
AS $fn$
DECLARE
    written bigint;
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'opskit_backfill_intro_request_stats must run in READ COMMITTED';
    END IF;
    PERFORM pg_advisory_xact_lock(1869640555, 12);
    PERFORM 1 FROM users WHERE id >= lo AND id < hi ORDER BY id FOR KEY SHARE;

    WITH pending AS (
        SELECT d.user_id,
               sum(d.sent_total) AS sent_total,
               sum(d.sent_pending) AS sent_pending,
               sum(d.sent_accepted) AS sent_accepted,
               sum(d.sent_declined) AS sent_declined,
               sum(d.received_total) AS received_total,
               sum(d.received_pending) AS received_pending,
               sum(d.received_accepted) AS received_accepted,
               sum(d.received_declined) AS received_declined
        FROM intro_request_stats_delta d
        WHERE d.user_id >= lo AND d.user_id < hi
        GROUP BY d.user_id
    ), upserted AS (
        INSERT INTO intro_request_stats_base AS b (
            user_id, sent_total, sent_pending, sent_accepted, sent_declined,
            received_total, received_pending, received_accepted, received_declined)
        SELECT t.user_id,
               t.sent_total - coalesce(p.sent_total, 0),
               t.sent_pending - coalesce(p.sent_pending, 0),
               t.sent_accepted - coalesce(p.sent_accepted, 0),
               t.sent_declined - coalesce(p.sent_declined, 0),
               t.received_total - coalesce(p.received_total, 0),
               t.received_pending - coalesce(p.received_pending, 0),
               t.received_accepted - coalesce(p.received_accepted, 0),
               t.received_declined - coalesce(p.received_declined, 0)
        FROM opskit_truth_intro_request_stats(lo, hi) t
        LEFT JOIN pending p ON p.user_id = t.user_id
        ORDER BY t.user_id
        ON CONFLICT (user_id) DO UPDATE SET
            sent_total = EXCLUDED.sent_total,
            sent_pending = EXCLUDED.sent_pending,
            sent_accepted = EXCLUDED.sent_accepted,
            sent_declined = EXCLUDED.sent_declined,
            received_total = EXCLUDED.received_total,
            received_pending = EXCLUDED.received_pending,
            received_accepted = EXCLUDED.received_accepted,
            received_declined = EXCLUDED.received_declined
        RETURNING 1
    )
    SELECT count(*) INTO written FROM upserted;

    DELETE FROM intro_request_stats_base b
    WHERE b.user_id >= lo AND b.user_id < hi
      AND NOT EXISTS (SELECT 1 FROM users u WHERE u.id = b.user_id);
    RETURN written;
END
$fn$;

CREATE OR REPLACE FUNCTION opskit_backfill_message_conversations(lo bigint, hi bigint)
RETURNS bigint
LANGUAGE plpgsql
AS $fn$
DECLARE
    key_users bigint[];
    key_others bigint[];
    written bigint;
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'opskit_backfill_message_conversations must run in READ COMMITTED';
    END IF;

    SELECT array_agg(k.user_id ORDER BY k.user_id, k.other_user_id),
           array_agg(k.other_user_id ORDER BY k.user_id, k.other_user_id)
    INTO key_users, key_others
    FROM (
        SELECT sender_id AS user_id, recipient_id AS other_user_id FROM messages
        WHERE sender_id >= lo AND sender_id < hi
        UNION
        SELECT recipient_id, sender_id FROM messages
        WHERE recipient_id >= lo AND recipient_id < hi
        UNION
        SELECT user_id, other_user_id FROM message_conversations_denorm
        WHERE user_id >= lo AND user_id < hi
    ) AS k;
    IF key_users IS NULL THEN
        RETURN 0;
    END IF;

    -- Lock every row in key order (placeholders for missing ones), like the trigger does.
    INSERT INTO message_conversations_denorm AS cv (user_id, other_user_id)
    SELECT k.user_id, k.other_user_id
    FROM unnest(key_users, key_others) WITH ORDINALITY AS k(user_id, other_user_id, n)
    ORDER BY k.n
    ON CONFLICT (user_id, other_user_id) DO UPDATE SET message_count = cv.message_count
    WHERE false;

    -- New snapshot: recompute every locked row in full, set-based: one pass over the batch's
    -- messages in both directions (a correlated subquery per pair took 2 minutes on medium,
    -- where a popular user's pairs each rescanned all of that user's messages).
    WITH pair_messages AS (
        -- each message once per side of its pair; a message to oneself has one side
        SELECT m.sender_id AS user_id, m.recipient_id AS other_user_id, m.id, m.created_at,
               m.sender_id, m.body, m.recipient_id = m.sender_id AND m.read_at IS NULL
                   AS unread_for_user
        FROM messages m
        WHERE m.sender_id >= lo AND m.sender_id < hi
        UNION ALL
        SELECT m.recipient_id, m.sender_id, m.id, m.created_at, m.sender_id, m.body,
               m.read_at IS NULL
        FROM messages m
        WHERE m.recipient_id >= lo AND m.recipient_id < hi AND m.recipient_id <> m.sender_id
    ), counts AS (
        SELECT pm.user_id, pm.other_user_id, count(*) AS message_count,
               count(*) FILTER (WHERE pm.unread_for_user) AS unread_count
        FROM pair_messages pm
        GROUP BY pm.user_id, pm.other_user_id
    ), newest AS (
        SELECT DISTINCT ON (pm.user_id, pm.other_user_id)
               pm.user_id, pm.other_user_id, pm.id, pm.created_at, pm.sender_id,
               left(pm.body, 100) AS preview
        FROM pair_messages pm
        ORDER BY pm.user_id, pm.other_user_id, pm.created_at DESC, pm.id DESC
    ), recomputed AS MATERIALIZED (
        -- Joined apart from the table: joined with it, the planner estimates one row for the
        -- keys x table join and loops over counts and newest once per key (67 s per batch on
        -- medium once the table is filled, instead of under a second).
        SELECT k.user_id, k.other_user_id,
               coalesce(c.message_count, 0) AS message_count,
               coalesce(c.unread_count, 0) AS unread_count,
               n.id, n.created_at, n.sender_id, n.preview
        FROM unnest(key_users, key_others) AS k(user_id, other_user_id)
        LEFT JOIN counts c ON c.user_id = k.user_id AND c.other_user_id = k.other_user_id
        LEFT JOIN newest n ON n.user_id = k.user_id AND n.other_user_id = k.other_user_id
    )
    UPDATE message_conversations_denorm AS cv
    SET message_count = r.message_count,
        unread_count = r.unread_count,
        last_message_id = r.id,
        last_message_at = r.created_at,
        last_message_sender_id = r.sender_id,
        last_message_preview = r.preview
    FROM recomputed r
    WHERE cv.user_id = r.user_id AND cv.other_user_id = r.other_user_id;
    GET DIAGNOSTICS written = ROW_COUNT;

    DELETE FROM message_conversations_denorm AS cv
    USING unnest(key_users, key_others) AS k(user_id, other_user_id)
    WHERE cv.user_id = k.user_id AND cv.other_user_id = k.other_user_id
      AND (cv.message_count <= 0 OR cv.last_message_id IS NULL);
    RETURN written;
END
$fn$;

-- ------------------------------------------------------------------ all batches

-- The batches of the full backfill still to run: one row each, deleted by the transaction that
-- runs the batch, so an interrupted backfill resumes with what is left.
CREATE TABLE IF NOT EXISTS opskit_backfill_batches (
    step     text   NOT NULL,
    lo       bigint NOT NULL,
    hi       bigint NOT NULL,
    position float8 NOT NULL,  -- claim order: the steps' batches interleaved
    PRIMARY KEY (step, lo)
);

-- Plans every batch: of project ids (project_stats: every project, whoever owns it meanwhile),
-- of user ids for the owner totals, the per-user columns and the intro stats, `batch_size` ids
-- each, and of user ids for the conversations, cut by volume: at most `messages_per_batch`
-- messages (counted once per side) unless one user alone has more. Cut by ids, the batch of the
-- few users with tens of thousands of messages each held 39,000 conversation rows for seconds
-- on `medium`, and was the one batch every other waited for at the end.
CREATE OR REPLACE FUNCTION opskit_backfill_plan(batch_size bigint, messages_per_batch bigint)
RETURNS bigint
LANGUAGE plpgsql
AS $fn$
DECLARE
    first_user bigint;
    last_user bigint;
    range_start bigint;
    volume bigint := 0;
    sender record;
BEGIN
    IF batch_size IS NULL OR batch_size < 1 OR messages_per_batch IS NULL
       OR messages_per_batch < 1 THEN
        RAISE EXCEPTION 'batch sizes must be positive numbers, not % and %', batch_size,
            messages_per_batch;
    END IF;
    DELETE FROM opskit_backfill_batches;
    INSERT INTO opskit_backfill_batches (step, lo, hi, position)
    SELECT s.step, b.lo, b.lo + batch_size,
           (row_number() OVER (PARTITION BY s.step ORDER BY b.lo) - 0.5)
               / count(*) OVER (PARTITION BY s.step)
    FROM (VALUES ('project_stats', 'projects'), ('owner_totals', 'users'),
                 ('user_columns', 'users'), ('intro_request_stats', 'users')) AS s(step, id_table)
    CROSS JOIN LATERAL (
        SELECT min(id) AS first_id, max(id) AS last_id FROM projects WHERE s.id_table = 'projects'
        UNION ALL
        SELECT min(id), max(id) FROM users WHERE s.id_table = 'users'
    ) AS r
    CROSS JOIN LATERAL generate_series(r.first_id, r.last_id, batch_size) AS b(lo)
    WHERE r.first_id IS NOT NULL;

    SELECT min(id), max(id) INTO first_user, last_user FROM users;
    IF first_user IS NULL THEN
        RETURN (SELECT count(*) FROM opskit_backfill_batches);
    END IF;
    range_start := first_user;
    FOR sender IN
        SELECT m.user_id, sum(m.n) AS n
        FROM (
            SELECT sender_id AS user_id, count(*) AS n FROM messages GROUP BY sender_id
            UNION ALL
            SELECT recipient_id, count(*) FROM messages GROUP BY recipient_id
        ) AS m
        GROUP BY m.user_id
        ORDER BY m.user_id
    LOOP
        IF volume > 0 AND volume + sender.n > messages_per_batch THEN
            INSERT INTO opskit_backfill_batches (step, lo, hi, position)
            VALUES ('message_conversations', range_start, sender.user_id, 0);
            range_start := sender.user_id;
            volume := 0;
        END IF;
        volume := volume + sender.n;
    END LOOP;
    INSERT INTO opskit_backfill_batches (step, lo, hi, position)
    VALUES ('message_conversations', range_start, last_user + 1, 0);
    UPDATE opskit_backfill_batches b
    SET position = (n.number - 0.5) / n.batches
    FROM (
        SELECT q.lo, row_number() OVER (ORDER BY q.lo) AS number, count(*) OVER () AS batches
        FROM opskit_backfill_batches q WHERE q.step = 'message_conversations'
    ) AS n
    WHERE b.step = 'message_conversations' AND b.lo = n.lo;
    RETURN (SELECT count(*) FROM opskit_backfill_batches);
END
$fn$;

-- Runs the planned batches of `steps` (all when NULL) until none is left, one per transaction,
-- in the order of position. Several sessions may run it at once: each claims its next batch
-- with FOR UPDATE SKIP LOCKED, so they share the work and never run a batch twice. Each batch
-- COMMITs: the users' KEY SHARE locks and the conversation row locks it takes are held for one
-- batch, never for the whole backfill, so an app write waits for one batch at most. A batch
-- that waits longer than lock_timeout for the app gives way: its subtransaction rolls back
-- (releasing its locks) and it runs again after a pause. Batches commit without waiting for
-- their WAL to be flushed (synchronous_commit off): a crash may lose the last ones, and with
-- them the deletes of their rows here, so they run again when the backfill resumes; the phase's
-- ledger row commits synchronously, which flushes them all. A procedure, so it can commit: CALL
-- it outside a transaction block (this file is no-transaction).
CREATE OR REPLACE PROCEDURE opskit_backfill_queued(steps text[] DEFAULT NULL)
LANGUAGE plpgsql
AS $proc$
DECLARE
    batch record;
    tries int;
BEGIN
    LOOP
        PERFORM set_config('synchronous_commit', 'off', true);
        SELECT b.step, b.lo, b.hi INTO batch
        FROM opskit_backfill_batches b
        WHERE steps IS NULL OR b.step = ANY (steps)
        ORDER BY b.position, b.step
        LIMIT 1
        FOR UPDATE SKIP LOCKED;
        EXIT WHEN NOT FOUND;
        tries := 0;
        LOOP
            BEGIN
                IF batch.step = 'project_stats' THEN
                    PERFORM opskit_backfill_project_stats(batch.lo, batch.hi);
                ELSIF batch.step = 'owner_totals' THEN
                    PERFORM opskit_backfill_owner_totals(batch.lo, batch.hi);
                ELSIF batch.step = 'user_columns' THEN
                    PERFORM opskit_backfill_user_columns(batch.lo, batch.hi);
                ELSIF batch.step = 'intro_request_stats' THEN
                    PERFORM opskit_backfill_intro_request_stats(batch.lo, batch.hi);
                ELSE
                    PERFORM opskit_backfill_message_conversations(batch.lo, batch.hi);
                END IF;
                EXIT;
            EXCEPTION WHEN lock_not_available OR deadlock_detected THEN
                tries := tries + 1;
                IF tries > 10 THEN
                    RAISE;
                END IF;
            END;
            PERFORM pg_sleep(0.05 * tries);
        END LOOP;
        DELETE FROM opskit_backfill_batches WHERE step = batch.step AND lo = batch.lo;
        COMMIT;
    END LOOP;
END
$proc$;

SELECT opskit_backfill_plan(250, 5000);

-- The project batches first, in this session: the owner totals read the folded counts they
-- write, and they all take the dashboard's advisory lock, so they could not overlap anyway.
CALL opskit_backfill_queued(ARRAY['project_stats']);

-- Then every other batch in two sessions at once. On a busy server each backend gets about an
-- equal share of the CPU, so the backfill's share grows with its sessions (three took more from
-- the app: docs/migrations.md, "Under load"). Batches of different users never wait for each other; the dashboard
-- batches (advisory lock) and the intro batches (their own) take turns, a batch at a time.
-- opskit: sessions 2
CALL opskit_backfill_queued(NULL);

-- Fresh planner statistics for what the backfill wrote: without them the planner guessed ~2,500
-- conversations per user on `medium` and chose a parallel scan (4 ms of worker start-up) for
-- what is a 3-row index lookup.
ANALYZE user_dashboard_stats_base, project_stats_base, intro_request_stats_base,
    message_conversations_denorm;
