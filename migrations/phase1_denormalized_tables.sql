SET lock_timeout = '5s';
SET statement_timeout = '15min';

-- phase1_denormalized_tables: the three denormalized relations of CONTRACT §6 and the triggers
-- that keep them equal to their truth (opskit/sql/truth.sql) at every commit, for every write
-- path of the app, from many READ COMMITTED connections at once.
--
-- Relations readers query
--   user_dashboard_stats          VIEW  = users LEFT JOIN base LEFT JOIN sum(pending deltas)
--   intro_request_stats           VIEW  = users LEFT JOIN base LEFT JOIN sum(pending deltas)
--   message_conversations_denorm  TABLE maintained row by row by the messages trigger
--
-- 1. Append-only deltas (user_dashboard_stats, intro_request_stats)
--    Triggers never UPDATE a counter row: every statement appends one signed delta row per
--    affected user to *_delta. A popular builder therefore is no hot row: thousands of
--    concurrent votes on their project insert thousands of independent rows and nobody waits
--    for anybody. The view adds base + sum(deltas) per user; opskit_fold_*_deltas() moves
--    deltas into the base rows in the background (one statement: DELETE the claimed deltas
--    ... RETURNING, aggregated into an upsert of base), so readers see either the deltas or
--    their sum in base, never both and never neither. The views are driven by `users`, so
--    they have exactly one row per existing user (zeros for a user without base row or
--    deltas) and `WHERE user_id = $1` is three index lookups.
--    intro_request_stats uses the same design although intros are low volume: a direct upsert
--    would lock the requester's and the target's rows until commit, and two transactions
--    touching the same two users in different statement orders could deadlock. With deltas an
--    intro write takes no lock at all, and fold/backfill are the same code as the dashboard's.
--    Neither table has a foreign key to users: an FK check on every delta would lock the user
--    row (KEY SHARE) and fail when the delta belongs to a user deleted in the same statement
--    (cascades). Instead a DEFERRED constraint trigger on users deletes the base and delta rows
--    of a deleted user at commit, after every cascade of the DELETE and the child tables'
--    statement triggers (which fire at the END of the DELETE, after its own) have run; see
--    opskit_trg_users_gone below.
--
-- 2. message_conversations_denorm is a plain table (last_message_* are not additive; two
--    transactions writing the same pair at the same moment are rare). The trigger first locks
--    every affected (user_id, other_user_id) row in key order, creating a placeholder for a
--    missing one (INSERT ... ORDER BY key ON CONFLICT DO UPDATE ... WHERE false locks without
--    writing), then, in new statements whose READ COMMITTED snapshot is taken after the locks:
--      * rows that already existed get incremental counts; last_message_* moves to the newest
--        changed message when it is newer, and is recomputed from `messages` when the current
--        last message was deleted or changed (newest message deleted -> previous one);
--      * placeholders (new pairs, or pairs that existed before phase1 and were never
--        backfilled) are computed in full from `messages`;
--      * rows left without messages are deleted.
--    A row is only ever written by a transaction holding its lock, and a transaction that
--    changes messages of a pair locks the pair before it commits. So when we read `messages`
--    after locking, every committed change of the pair is already in the row (or in our full
--    recomputation), and every uncommitted one is invisible to us and will be applied on top
--    of our result by its own transaction once we commit. Rows are therefore correct from
--    their creation on, even while the backfill runs.
--
-- 3. The project race (votes/comments vs. soft delete, restore, owner move, hard delete)
--    A vote counts for the owner of its project only while the project is live. Which project
--    state does a vote trigger use, and which votes does a project trigger move?
--      * INSERT of votes/comments, and UPDATEs that move a row to another project: the trigger
--        locks the target projects FOR SHARE, in ascending id order, before it reads them.
--        FOR SHARE conflicts with the FOR NO KEY UPDATE lock of an UPDATE of projects (the
--        FK check only takes FOR KEY SHARE, which does not). Either the vote trigger gets the
--        lock first, and the project UPDATE waits until the vote commits, so the project
--        trigger (which runs after the UPDATE got its lock, with a new snapshot) counts the
--        vote; or the project UPDATE holds the lock, and the vote trigger waits, and under
--        READ COMMITTED SELECT ... FOR SHARE returns the newest committed version, so the
--        vote is attributed to the new state. Shared locks do not conflict with each other,
--        so concurrent voters on a hot project never wait for one another.
--      * DELETE and UPDATE in place (vote flip) take no project lock. Instead the project
--        triggers lock the project's votes and comments FOR SHARE (ordered) before counting
--        them: a vote deleted or flipped by an uncommitted transaction makes the project
--        trigger wait, and a vote locked first by the project trigger makes the flip/delete
--        wait until the project change committed; the vote trigger then reads the project
--        with a new snapshot and sees the new state. Either way each vote is moved exactly
--        once. (Locking the project from a flip/delete would deadlock: the flip holds the
--        vote, the project trigger holds the project and waits for the vote.)
--      * Hard DELETE of a project: a BEFORE DELETE row trigger (the row is already locked
--        when it runs, OLD is the newest version) removes the project's whole contribution;
--        the cascaded deletes of its votes/comments then find no project and only change
--        votes_cast.
--    Lock order: a transaction holding a project lock only ever waits for vote/comment rows,
--    and a vote/comment writer that waits for a project lock holds no row a project trigger
--    can wait for (its new rows are invisible to others). The app's write paths (vote, unvote,
--    flip, comment, uncomment, soft delete, restore, owner move, hard delete, user deletion)
--    therefore never deadlock, whatever their mix (tests/integration/test_phase1_exactness.py
--    counts). Deadlocks remain possible for statements the app does not issue, when they run
--    concurrently with a soft delete / owner move of the same project: a multi-row UPDATE of
--    one project's votes or comments (it locks them in its scan order, the project trigger in
--    (project_id, ctid) order), moving a vote or comment to another project or user (the row is
--    held while waiting for the target project or a concurrent insert of the same key), a
--    transaction that flips or deletes a vote and then inserts a vote or comment on the same
--    project, and multi-row UPDATEs of projects in random order. A deadlock aborts one
--    transaction (the app retries it); it never leaves a wrong count.
--    Alternative if those matter one day: keep vote/comment deltas per project and join the
--    owner and deleted_at of projects at read time; project changes then need no delta at all.

-- 4. Triggers are statement-level AFTER triggers with transition tables (one per event,
--    PostgreSQL allows no transition tables with column lists or several events). An UPDATE
--    only counts rows whose relevant columns changed (NEW EXCEPT ALL OLD over those columns);
--    an UPDATE that changes nothing relevant returns before taking any lock.

-- ------------------------------------------------------------------ user_dashboard_stats

CREATE TABLE user_dashboard_stats_base (
    user_id                 bigint PRIMARY KEY,
    projects_count          bigint NOT NULL DEFAULT 0,
    upvotes_received        bigint NOT NULL DEFAULT 0,
    downvotes_received      bigint NOT NULL DEFAULT 0,
    comments_received       bigint NOT NULL DEFAULT 0,
    votes_cast              bigint NOT NULL DEFAULT 0,
    followers_count         bigint NOT NULL DEFAULT 0,
    following_count         bigint NOT NULL DEFAULT 0,
    unread_messages         bigint NOT NULL DEFAULT 0,
    pending_intros_received bigint NOT NULL DEFAULT 0
);

-- Append-only; rows are only ever inserted (triggers) and deleted (fold, user deletion).
CREATE TABLE user_dashboard_stats_delta (
    user_id                 bigint NOT NULL,
    projects_count          bigint NOT NULL DEFAULT 0,
    upvotes_received        bigint NOT NULL DEFAULT 0,
    downvotes_received      bigint NOT NULL DEFAULT 0,
    comments_received       bigint NOT NULL DEFAULT 0,
    votes_cast              bigint NOT NULL DEFAULT 0,
    followers_count         bigint NOT NULL DEFAULT 0,
    following_count         bigint NOT NULL DEFAULT 0,
    unread_messages         bigint NOT NULL DEFAULT 0,
    pending_intros_received bigint NOT NULL DEFAULT 0
) WITH (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_insert_scale_factor = 0.02);
CREATE INDEX user_dashboard_stats_delta_user_id_idx ON user_dashboard_stats_delta (user_id);

CREATE OR REPLACE VIEW user_dashboard_stats AS
SELECT u.id AS user_id,
       (coalesce(b.projects_count, 0) + coalesce(d.projects_count, 0))::bigint AS projects_count,
       (coalesce(b.upvotes_received, 0) + coalesce(d.upvotes_received, 0))::bigint
           AS upvotes_received,
       (coalesce(b.downvotes_received, 0) + coalesce(d.downvotes_received, 0))::bigint
           AS downvotes_received,
       (coalesce(b.comments_received, 0) + coalesce(d.comments_received, 0))::bigint
           AS comments_received,
       (coalesce(b.votes_cast, 0) + coalesce(d.votes_cast, 0))::bigint AS votes_cast,
       (coalesce(b.followers_count, 0) + coalesce(d.followers_count, 0))::bigint
           AS followers_count,
       (coalesce(b.following_count, 0) + coalesce(d.following_count, 0))::bigint
           AS following_count,
       (coalesce(b.unread_messages, 0) + coalesce(d.unread_messages, 0))::bigint
           AS unread_messages,
       (coalesce(b.pending_intros_received, 0) + coalesce(d.pending_intros_received, 0))::bigint
           AS pending_intros_received
FROM users u
LEFT JOIN user_dashboard_stats_base b ON b.user_id = u.id
LEFT JOIN (
    SELECT user_id,
           sum(projects_count) AS projects_count,
           sum(upvotes_received) AS upvotes_received,
           sum(downvotes_received) AS downvotes_received,
           sum(comments_received) AS comments_received,
           sum(votes_cast) AS votes_cast,
           sum(followers_count) AS followers_count,
           sum(following_count) AS following_count,
           sum(unread_messages) AS unread_messages,
           sum(pending_intros_received) AS pending_intros_received
    FROM user_dashboard_stats_delta
    GROUP BY user_id
) d ON d.user_id = u.id;

-- ------------------------------------------------------------------ intro_request_stats

CREATE TABLE intro_request_stats_base (
    user_id           bigint PRIMARY KEY,
    sent_total        bigint NOT NULL DEFAULT 0,
    sent_pending      bigint NOT NULL DEFAULT 0,
    sent_accepted     bigint NOT NULL DEFAULT 0,
    sent_declined     bigint NOT NULL DEFAULT 0,
    received_total    bigint NOT NULL DEFAULT 0,
    received_pending  bigint NOT NULL DEFAULT 0,
    received_accepted bigint NOT NULL DEFAULT 0,
    received_declined bigint NOT NULL DEFAULT 0
);

CREATE TABLE intro_request_stats_delta (
    user_id           bigint NOT NULL,
    sent_total        bigint NOT NULL DEFAULT 0,
    sent_pending      bigint NOT NULL DEFAULT 0,
    sent_accepted     bigint NOT NULL DEFAULT 0,
    sent_declined     bigint NOT NULL DEFAULT 0,
    received_total    bigint NOT NULL DEFAULT 0,
    received_pending  bigint NOT NULL DEFAULT 0,
    received_accepted bigint NOT NULL DEFAULT 0,
    received_declined bigint NOT NULL DEFAULT 0
) WITH (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_insert_scale_factor = 0.02);
CREATE INDEX intro_request_stats_delta_user_id_idx ON intro_request_stats_delta (user_id);

CREATE OR REPLACE VIEW intro_request_stats AS
SELECT u.id AS user_id,
       (coalesce(b.sent_total, 0) + coalesce(d.sent_total, 0))::bigint AS sent_total,
       (coalesce(b.sent_pending, 0) + coalesce(d.sent_pending, 0))::bigint AS sent_pending,
       (coalesce(b.sent_accepted, 0) + coalesce(d.sent_accepted, 0))::bigint AS sent_accepted,
       (coalesce(b.sent_declined, 0) + coalesce(d.sent_declined, 0))::bigint AS sent_declined,
       (coalesce(b.received_total, 0) + coalesce(d.received_total, 0))::bigint AS received_total,
       (coalesce(b.received_pending, 0) + coalesce(d.received_pending, 0))::bigint
           AS received_pending,
       (coalesce(b.received_accepted, 0) + coalesce(d.received_accepted, 0))::bigint
           AS received_accepted,
       (coalesce(b.received_declined, 0) + coalesce(d.received_declined, 0))::bigint
           AS received_declined
FROM users u
LEFT JOIN intro_request_stats_base b ON b.user_id = u.id
LEFT JOIN (
    SELECT user_id,
           sum(sent_total) AS sent_total,
           sum(sent_pending) AS sent_pending,
           sum(sent_accepted) AS sent_accepted,
           sum(sent_declined) AS sent_declined,
           sum(received_total) AS received_total,
           sum(received_pending) AS received_pending,
           sum(received_accepted) AS received_accepted,
           sum(received_declined) AS received_declined
    FROM intro_request_stats_delta
    GROUP BY user_id
) d ON d.user_id = u.id;

-- ------------------------------------------------------------------ message_conversations_denorm

-- last_message_id is NULL only transiently, inside the transaction that created the row.
CREATE TABLE message_conversations_denorm (
    user_id                bigint NOT NULL,
    other_user_id          bigint NOT NULL,
    message_count          bigint NOT NULL DEFAULT 0,
    unread_count           bigint NOT NULL DEFAULT 0,
    last_message_id        bigint,
    last_message_at        timestamptz,
    last_message_sender_id bigint,
    last_message_preview   text,
    PRIMARY KEY (user_id, other_user_id)
);
CREATE INDEX message_conversations_denorm_other_user_id_idx
    ON message_conversations_denorm (other_user_id);

-- ------------------------------------------------------------------ fold

-- Moves up to max_rows pending deltas into the base rows; returns how many it moved. Safe while
-- writers go on and with several folds at once: claimed rows are locked (SKIP LOCKED, so two
-- folds never claim the same row and a fold never waits for a writer), deleted and added to base
-- in one statement, so they are counted once, either as deltas or in base. Base rows are
-- locked in user_id order (the upsert follows the ORDER BY), so folds do not deadlock each
-- other. Deltas of users deleted meanwhile are dropped, not folded. While a backfill holds the
-- exclusive advisory lock the fold does nothing and returns 0 (call it again later).
CREATE OR REPLACE FUNCTION opskit_fold_user_dashboard_deltas(max_rows integer DEFAULT 10000)
RETURNS bigint
LANGUAGE plpgsql
AS $fn$
DECLARE
    v_folded bigint;
BEGIN
    IF NOT pg_try_advisory_xact_lock_shared(1869640555, 11) THEN
        RETURN 0;
    END IF;
    WITH moved AS (
        DELETE FROM user_dashboard_stats_delta
        WHERE ctid = ANY (ARRAY(
            SELECT ctid FROM user_dashboard_stats_delta LIMIT max_rows FOR UPDATE SKIP LOCKED
        ))
        RETURNING *
    ), agg AS (
        SELECT user_id, count(*) AS n,
               sum(projects_count) AS projects_count,
               sum(upvotes_received) AS upvotes_received,
               sum(downvotes_received) AS downvotes_received,
               sum(comments_received) AS comments_received,
               sum(votes_cast) AS votes_cast,
               sum(followers_count) AS followers_count,
               sum(following_count) AS following_count,
               sum(unread_messages) AS unread_messages,
               sum(pending_intros_received) AS pending_intros_received
        FROM moved
        GROUP BY user_id
    ), applied AS (
        INSERT INTO user_dashboard_stats_base AS b (
            user_id, projects_count, upvotes_received, downvotes_received, comments_received,
            votes_cast, followers_count, following_count, unread_messages,
            pending_intros_received)
        SELECT a.user_id, a.projects_count, a.upvotes_received, a.downvotes_received,
               a.comments_received, a.votes_cast, a.followers_count, a.following_count,
               a.unread_messages, a.pending_intros_received
        FROM agg a
        WHERE EXISTS (SELECT 1 FROM users u WHERE u.id = a.user_id)
        ORDER BY a.user_id
        ON CONFLICT (user_id) DO UPDATE SET
            projects_count = b.projects_count + EXCLUDED.projects_count,
            upvotes_received = b.upvotes_received + EXCLUDED.upvotes_received,
            downvotes_received = b.downvotes_received + EXCLUDED.downvotes_received,
            comments_received = b.comments_received + EXCLUDED.comments_received,
            votes_cast = b.votes_cast + EXCLUDED.votes_cast,
            followers_count = b.followers_count + EXCLUDED.followers_count,
            following_count = b.following_count + EXCLUDED.following_count,
            unread_messages = b.unread_messages + EXCLUDED.unread_messages,
            pending_intros_received = b.pending_intros_received + EXCLUDED.pending_intros_received
        RETURNING 1
    )
    SELECT coalesce(sum(n), 0) INTO v_folded FROM agg;
    RETURN v_folded;
END
$fn$;

CREATE OR REPLACE FUNCTION opskit_fold_intro_request_deltas(max_rows integer DEFAULT 10000)
RETURNS bigint
LANGUAGE plpgsql
AS $fn$
DECLARE
    v_folded bigint;
BEGIN
    IF NOT pg_try_advisory_xact_lock_shared(1869640555, 12) THEN
        RETURN 0;
    END IF;
    WITH moved AS (
        DELETE FROM intro_request_stats_delta
        WHERE ctid = ANY (ARRAY(
            SELECT ctid FROM intro_request_stats_delta LIMIT max_rows FOR UPDATE SKIP LOCKED
        ))
        RETURNING *
    ), agg AS (
        SELECT user_id, count(*) AS n,
               sum(sent_total) AS sent_total,
               sum(sent_pending) AS sent_pending,
               sum(sent_accepted) AS sent_accepted,
               sum(sent_declined) AS sent_declined,
               sum(received_total) AS received_total,
               sum(received_pending) AS received_pending,
               sum(received_accepted) AS received_accepted,
               sum(received_declined) AS received_declined
        FROM moved
        GROUP BY user_id
    ), applied AS (
        INSERT INTO intro_request_stats_base AS b (
            user_id, sent_total, sent_pending, sent_accepted, sent_declined,
            received_total, received_pending, received_accepted, received_declined)
        SELECT a.user_id, a.sent_total, a.sent_pending, a.sent_accepted, a.sent_declined,
               a.received_total, a.received_pending, a.received_accepted, a.received_declined
        FROM agg a
        WHERE EXISTS (SELECT 1 FROM users u WHERE u.id = a.user_id)
        ORDER BY a.user_id
        ON CONFLICT (user_id) DO UPDATE SET
            sent_total = b.sent_total + EXCLUDED.sent_total,
            sent_pending = b.sent_pending + EXCLUDED.sent_pending,
            sent_accepted = b.sent_accepted + EXCLUDED.sent_accepted,
            sent_declined = b.sent_declined + EXCLUDED.sent_declined,
            received_total = b.received_total + EXCLUDED.received_total,
            received_pending = b.received_pending + EXCLUDED.received_pending,
            received_accepted = b.received_accepted + EXCLUDED.received_accepted,
            received_declined = b.received_declined + EXCLUDED.received_declined
        RETURNING 1
    )
    SELECT coalesce(sum(n), 0) INTO v_folded FROM agg;
    RETURN v_folded;
END
$fn$;

-- ------------------------------------------------------------------ trigger functions

-- users: a deleted user's own rows go away (and, for an UPDATE of users.id - possible only for
-- a user nothing references - the rows of the old id). A DEFERRED constraint trigger, so it runs
-- at commit, after everything else of the transaction: the statement-level triggers of the
-- tables a DELETE FROM users cascades to fire only at the end of that statement (after its own
-- statement triggers), and they still add deltas for the deleted user (e.g. votes_cast); and a
-- concurrent transaction whose write conflicted with one of the cascaded deletes has committed
-- by then (the cascade waited for it), so its deltas for this user are visible here too. Later
-- transactions cannot add any: every write that produces a delta for a user references the user
-- or one of their rows and waits for, then fails against, the delete.
-- Limitation: deleting a user and re-creating the same id in ONE transaction drops the new
-- user's deltas of that transaction too (ids are identities; the app never reuses them).
CREATE OR REPLACE FUNCTION opskit_trg_users_gone() RETURNS trigger
LANGUAGE plpgsql
AS $fn$
BEGIN
    DELETE FROM user_dashboard_stats_delta WHERE user_id = OLD.id;
    DELETE FROM user_dashboard_stats_base WHERE user_id = OLD.id;
    DELETE FROM intro_request_stats_delta WHERE user_id = OLD.id;
    DELETE FROM intro_request_stats_base WHERE user_id = OLD.id;
    DELETE FROM message_conversations_denorm
    WHERE user_id = OLD.id OR other_user_id = OLD.id;
    RETURN NULL;
END
$fn$;

-- projects INSERT / UPDATE: the owner's projects_count, and on soft delete, restore or owner
-- move the project's votes and comments (counted after locking them, see section 3 above).
CREATE OR REPLACE FUNCTION opskit_trg_projects() RETURNS trigger
LANGUAGE plpgsql
AS $fn$
DECLARE
    v_signs int[];
    v_ids bigint[];
    v_owners bigint[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        -- A project that did not exist has no votes or comments yet.
        INSERT INTO user_dashboard_stats_delta (user_id, projects_count)
        SELECT owner_id, count(*) FROM new_rows WHERE deleted_at IS NULL GROUP BY owner_id;
        RETURN NULL;
    END IF;

    -- UPDATE: only rows whose (id, owner, live) changed; the old version leaves, the new arrives.
    SELECT array_agg(c.sign), array_agg(c.id), array_agg(c.owner_id)
    INTO v_signs, v_ids, v_owners
    FROM (
        SELECT 1 AS sign, n.id, n.owner_id
        FROM (SELECT id, owner_id, deleted_at IS NULL AS live FROM new_rows
              EXCEPT ALL
              SELECT id, owner_id, deleted_at IS NULL FROM old_rows) AS n
        WHERE n.live
        UNION ALL
        SELECT -1, o.id, o.owner_id
        FROM (SELECT id, owner_id, deleted_at IS NULL AS live FROM old_rows
              EXCEPT ALL
              SELECT id, owner_id, deleted_at IS NULL FROM new_rows) AS o
        WHERE o.live
    ) AS c;
    IF v_signs IS NULL THEN
        RETURN NULL;
    END IF;

    -- Lock the votes and comments of these projects, then count them with a snapshot taken
    -- after the locks. Lock order (project_id, ctid) is the order in which an index or bitmap
    -- scan of votes_project_id_idx (duplicates are kept in heap order) or a sequential scan
    -- finds them, so a multi-row UPDATE/DELETE of a project's votes locks them in the same order
    -- and cannot deadlock with us.
    PERFORM 1 FROM votes WHERE project_id = ANY (v_ids) ORDER BY project_id, ctid FOR SHARE;
    PERFORM 1 FROM comments WHERE project_id = ANY (v_ids) ORDER BY project_id, ctid FOR SHARE;

    INSERT INTO user_dashboard_stats_delta
        (user_id, projects_count, upvotes_received, downvotes_received, comments_received)
    SELECT c.owner_id,
           sum(c.sign),
           sum(c.sign * coalesce(v.up, 0)),
           sum(c.sign * coalesce(v.down, 0)),
           sum(c.sign * coalesce(m.n, 0))
    FROM unnest(v_signs, v_ids, v_owners) AS c(sign, id, owner_id)
    LEFT JOIN (
        SELECT project_id,
               count(*) FILTER (WHERE vote_type = 'up') AS up,
               count(*) FILTER (WHERE vote_type = 'down') AS down
        FROM votes WHERE project_id = ANY (v_ids) GROUP BY project_id
    ) AS v ON v.project_id = c.id
    LEFT JOIN (
        SELECT project_id, count(*) AS n
        FROM comments WHERE project_id = ANY (v_ids) GROUP BY project_id
    ) AS m ON m.project_id = c.id
    GROUP BY c.owner_id
    HAVING sum(c.sign) <> 0
        OR sum(c.sign * coalesce(v.up, 0)) <> 0
        OR sum(c.sign * coalesce(v.down, 0)) <> 0
        OR sum(c.sign * coalesce(m.n, 0)) <> 0;
    RETURN NULL;
END
$fn$;

-- projects DELETE, BEFORE, per row: runs before the cascades delete the votes and comments
-- (afterwards they could no longer be counted) and after the row is locked, with OLD being its
-- newest version.
CREATE OR REPLACE FUNCTION opskit_trg_projects_before_delete() RETURNS trigger
LANGUAGE plpgsql
AS $fn$
BEGIN
    IF OLD.deleted_at IS NULL THEN
        PERFORM 1 FROM votes WHERE project_id = OLD.id ORDER BY ctid FOR SHARE;
        PERFORM 1 FROM comments WHERE project_id = OLD.id ORDER BY ctid FOR SHARE;
        INSERT INTO user_dashboard_stats_delta
            (user_id, projects_count, upvotes_received, downvotes_received, comments_received)
        SELECT OLD.owner_id, -1,
               -(SELECT count(*) FROM votes WHERE project_id = OLD.id AND vote_type = 'up'),
               -(SELECT count(*) FROM votes WHERE project_id = OLD.id AND vote_type = 'down'),
               -(SELECT count(*) FROM comments WHERE project_id = OLD.id);
    END IF;
    RETURN OLD;
END
$fn$;

-- votes: votes_cast of the voter; up/downvotes_received of the owner of a live project.
CREATE OR REPLACE FUNCTION opskit_trg_votes() RETURNS trigger
LANGUAGE plpgsql
AS $fn$
DECLARE
    v_signs int[];
    v_users bigint[];
    v_projects bigint[];
    v_types text[];
    v_lock_ids bigint[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT array_agg(1), array_agg(user_id), array_agg(project_id), array_agg(vote_type)
        INTO v_signs, v_users, v_projects, v_types
        FROM new_rows;
        v_lock_ids := v_projects;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT array_agg(-1), array_agg(user_id), array_agg(project_id), array_agg(vote_type)
        INTO v_signs, v_users, v_projects, v_types
        FROM old_rows;
    ELSE
        SELECT array_agg(c.sign), array_agg(c.user_id), array_agg(c.project_id),
               array_agg(c.vote_type)
        INTO v_signs, v_users, v_projects, v_types
        FROM (
            SELECT 1 AS sign, n.*
            FROM (SELECT user_id, project_id, vote_type FROM new_rows
                  EXCEPT ALL
                  SELECT user_id, project_id, vote_type FROM old_rows) AS n
            UNION ALL
            SELECT -1, o.*
            FROM (SELECT user_id, project_id, vote_type FROM old_rows
                  EXCEPT ALL
                  SELECT user_id, project_id, vote_type FROM new_rows) AS o
        ) AS c;
        IF v_signs IS NULL THEN
            RETURN NULL;
        END IF;
        -- Votes that arrive at a project they were not on: lock that project (section 3). A
        -- flip, or a vote given to another user on the same project, stays visible to the
        -- project trigger under its old version and must not lock the project (it holds the
        -- vote; locking the project too could deadlock with a project trigger waiting for it).
        -- One updated row pairs OLD with NEW exactly; for several rows a vote has no identity
        -- but its key, so any new (user, project) key counts as an arrival (conservative: a
        -- user_id change in a multi-row UPDATE then locks its project too).
        IF (SELECT count(*) FROM old_rows) = 1 THEN
            SELECT array_agg(n.project_id) INTO v_lock_ids
            FROM new_rows n CROSS JOIN old_rows o
            WHERE n.project_id <> o.project_id;
        ELSE
            SELECT array_agg(project_id) INTO v_lock_ids
            FROM (SELECT user_id, project_id FROM new_rows
                  EXCEPT
                  SELECT user_id, project_id FROM old_rows) AS arrived;
        END IF;
    END IF;
    IF v_signs IS NULL THEN
        RETURN NULL;
    END IF;
    IF v_lock_ids IS NOT NULL THEN
        PERFORM 1 FROM projects WHERE id = ANY (v_lock_ids) ORDER BY id FOR SHARE;
    END IF;

    INSERT INTO user_dashboard_stats_delta
        (user_id, votes_cast, upvotes_received, downvotes_received)
    SELECT x.user_id, sum(x.cast_), sum(x.up), sum(x.down)
    FROM (
        SELECT c.user_id, c.sign AS cast_, 0 AS up, 0 AS down
        FROM unnest(v_signs, v_users) AS c(sign, user_id)
        UNION ALL
        SELECT p.owner_id, 0,
               CASE WHEN c.vote_type = 'up' THEN c.sign ELSE 0 END,
               CASE WHEN c.vote_type = 'down' THEN c.sign ELSE 0 END
        FROM unnest(v_signs, v_projects, v_types) AS c(sign, project_id, vote_type)
        JOIN projects p ON p.id = c.project_id AND p.deleted_at IS NULL
    ) AS x
    GROUP BY x.user_id
    HAVING sum(x.cast_) <> 0 OR sum(x.up) <> 0 OR sum(x.down) <> 0;
    RETURN NULL;
END
$fn$;

-- comments: comments_received of the owner of a live project.
CREATE OR REPLACE FUNCTION opskit_trg_comments() RETURNS trigger
LANGUAGE plpgsql
AS $fn$
DECLARE
    v_signs int[];
    v_projects bigint[];
    v_lock_ids bigint[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT array_agg(1), array_agg(project_id) INTO v_signs, v_projects FROM new_rows;
        v_lock_ids := v_projects;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT array_agg(-1), array_agg(project_id) INTO v_signs, v_projects FROM old_rows;
    ELSE
        -- A comment is identified by its id: (id, project_id) pairs that changed.
        SELECT array_agg(c.sign), array_agg(c.project_id) INTO v_signs, v_projects
        FROM (
            SELECT 1 AS sign, n.project_id
            FROM (SELECT id, project_id FROM new_rows
                  EXCEPT ALL
                  SELECT id, project_id FROM old_rows) AS n
            UNION ALL
            SELECT -1, o.project_id
            FROM (SELECT id, project_id FROM old_rows
                  EXCEPT ALL
                  SELECT id, project_id FROM new_rows) AS o
        ) AS c;
        SELECT array_agg(project_id) INTO v_lock_ids
        FROM (SELECT id, project_id FROM new_rows
              EXCEPT
              SELECT id, project_id FROM old_rows) AS arrived;
    END IF;
    IF v_signs IS NULL THEN
        RETURN NULL;
    END IF;
    IF v_lock_ids IS NOT NULL THEN
        PERFORM 1 FROM projects WHERE id = ANY (v_lock_ids) ORDER BY id FOR SHARE;
    END IF;

    INSERT INTO user_dashboard_stats_delta (user_id, comments_received)
    SELECT p.owner_id, sum(c.sign)
    FROM unnest(v_signs, v_projects) AS c(sign, project_id)
    JOIN projects p ON p.id = c.project_id AND p.deleted_at IS NULL
    GROUP BY p.owner_id
    HAVING sum(c.sign) <> 0;
    RETURN NULL;
END
$fn$;

-- follows: followers_count of the followee, following_count of the follower.
CREATE OR REPLACE FUNCTION opskit_trg_follows() RETURNS trigger
LANGUAGE plpgsql
AS $fn$
DECLARE
    v_signs int[];
    v_followers bigint[];
    v_followees bigint[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT array_agg(1), array_agg(follower_id), array_agg(followee_id)
        INTO v_signs, v_followers, v_followees FROM new_rows;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT array_agg(-1), array_agg(follower_id), array_agg(followee_id)
        INTO v_signs, v_followers, v_followees FROM old_rows;
    ELSE
        SELECT array_agg(c.sign), array_agg(c.follower_id), array_agg(c.followee_id)
        INTO v_signs, v_followers, v_followees
        FROM (
            SELECT 1 AS sign, n.*
            FROM (SELECT follower_id, followee_id FROM new_rows
                  EXCEPT ALL
                  SELECT follower_id, followee_id FROM old_rows) AS n
            UNION ALL
            SELECT -1, o.*
            FROM (SELECT follower_id, followee_id FROM old_rows
                  EXCEPT ALL
                  SELECT follower_id, followee_id FROM new_rows) AS o
        ) AS c;
    END IF;
    IF v_signs IS NULL THEN
        RETURN NULL;
    END IF;

    INSERT INTO user_dashboard_stats_delta (user_id, followers_count, following_count)
    SELECT x.user_id, sum(x.followers), sum(x.following)
    FROM (
        SELECT c.followee_id AS user_id, c.sign AS followers, 0 AS following
        FROM unnest(v_signs, v_followees) AS c(sign, followee_id)
        UNION ALL
        SELECT c.follower_id, 0, c.sign
        FROM unnest(v_signs, v_followers) AS c(sign, follower_id)
    ) AS x
    GROUP BY x.user_id
    HAVING sum(x.followers) <> 0 OR sum(x.following) <> 0;
    RETURN NULL;
END
$fn$;

-- intro_requests: intro_request_stats of requester and target, pending_intros_received.
CREATE OR REPLACE FUNCTION opskit_trg_intro_requests() RETURNS trigger
LANGUAGE plpgsql
AS $fn$
DECLARE
    v_signs int[];
    v_requesters bigint[];
    v_targets bigint[];
    v_statuses text[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT array_agg(1), array_agg(requester_id), array_agg(target_id), array_agg(status)
        INTO v_signs, v_requesters, v_targets, v_statuses FROM new_rows;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT array_agg(-1), array_agg(requester_id), array_agg(target_id), array_agg(status)
        INTO v_signs, v_requesters, v_targets, v_statuses FROM old_rows;
    ELSE
        SELECT array_agg(c.sign), array_agg(c.requester_id), array_agg(c.target_id),
               array_agg(c.status)
        INTO v_signs, v_requesters, v_targets, v_statuses
        FROM (
            SELECT 1 AS sign, n.*
            FROM (SELECT requester_id, target_id, status FROM new_rows
                  EXCEPT ALL
                  SELECT requester_id, target_id, status FROM old_rows) AS n
            UNION ALL
            SELECT -1, o.*
            FROM (SELECT requester_id, target_id, status FROM old_rows
                  EXCEPT ALL
                  SELECT requester_id, target_id, status FROM new_rows) AS o
        ) AS c;
    END IF;
    IF v_signs IS NULL THEN
        RETURN NULL;
    END IF;

    INSERT INTO intro_request_stats_delta (
        user_id, sent_total, sent_pending, sent_accepted, sent_declined,
        received_total, received_pending, received_accepted, received_declined)
    SELECT x.user_id, sum(x.st), sum(x.sp), sum(x.sa), sum(x.sd),
           sum(x.rt), sum(x.rp), sum(x.ra), sum(x.rd)
    FROM (
        SELECT c.requester_id AS user_id,
               c.sign AS st,
               CASE WHEN c.status = 'pending' THEN c.sign ELSE 0 END AS sp,
               CASE WHEN c.status = 'accepted' THEN c.sign ELSE 0 END AS sa,
               CASE WHEN c.status = 'declined' THEN c.sign ELSE 0 END AS sd,
               0 AS rt, 0 AS rp, 0 AS ra, 0 AS rd
        FROM unnest(v_signs, v_requesters, v_statuses) AS c(sign, requester_id, status)
        UNION ALL
        SELECT c.target_id, 0, 0, 0, 0,
               c.sign,
               CASE WHEN c.status = 'pending' THEN c.sign ELSE 0 END,
               CASE WHEN c.status = 'accepted' THEN c.sign ELSE 0 END,
               CASE WHEN c.status = 'declined' THEN c.sign ELSE 0 END
        FROM unnest(v_signs, v_targets, v_statuses) AS c(sign, target_id, status)
    ) AS x
    GROUP BY x.user_id
    HAVING sum(x.st) <> 0 OR sum(x.sp) <> 0 OR sum(x.sa) <> 0 OR sum(x.sd) <> 0
        OR sum(x.rt) <> 0 OR sum(x.rp) <> 0 OR sum(x.ra) <> 0 OR sum(x.rd) <> 0;

    INSERT INTO user_dashboard_stats_delta (user_id, pending_intros_received)
    SELECT c.target_id, sum(c.sign)
    FROM unnest(v_signs, v_targets, v_statuses) AS c(sign, target_id, status)
    WHERE c.status = 'pending'
    GROUP BY c.target_id
    HAVING sum(c.sign) <> 0;
    RETURN NULL;
END
$fn$;

-- messages: unread_messages of the recipient, and message_conversations_denorm (section 2).
CREATE OR REPLACE FUNCTION opskit_trg_messages() RETURNS trigger
LANGUAGE plpgsql
AS $fn$
DECLARE
    v_signs int[];
    v_ids bigint[];
    v_senders bigint[];
    v_recipients bigint[];
    v_sent_at timestamptz[];
    v_unread boolean[];
    v_previews text[];
    v_key_users bigint[];
    v_key_others bigint[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT array_agg(1), array_agg(id), array_agg(sender_id), array_agg(recipient_id),
               array_agg(created_at), array_agg(read_at IS NULL), array_agg(left(body, 100))
        INTO v_signs, v_ids, v_senders, v_recipients, v_sent_at, v_unread, v_previews
        FROM new_rows;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT array_agg(-1), array_agg(id), array_agg(sender_id), array_agg(recipient_id),
               array_agg(created_at), array_agg(read_at IS NULL), array_agg(left(body, 100))
        INTO v_signs, v_ids, v_senders, v_recipients, v_sent_at, v_unread, v_previews
        FROM old_rows;
    ELSE
        SELECT array_agg(c.sign), array_agg(c.id), array_agg(c.sender_id),
               array_agg(c.recipient_id), array_agg(c.created_at), array_agg(c.unread),
               array_agg(c.preview)
        INTO v_signs, v_ids, v_senders, v_recipients, v_sent_at, v_unread, v_previews
        FROM (
            SELECT 1 AS sign, n.*
            FROM (SELECT id, sender_id, recipient_id, created_at, read_at IS NULL AS unread,
                         left(body, 100) AS preview
                  FROM new_rows
                  EXCEPT ALL
                  SELECT id, sender_id, recipient_id, created_at, read_at IS NULL,
                         left(body, 100)
                  FROM old_rows) AS n
            UNION ALL
            SELECT -1, o.*
            FROM (SELECT id, sender_id, recipient_id, created_at, read_at IS NULL AS unread,
                         left(body, 100) AS preview
                  FROM old_rows
                  EXCEPT ALL
                  SELECT id, sender_id, recipient_id, created_at, read_at IS NULL,
                         left(body, 100)
                  FROM new_rows) AS o
        ) AS c;
    END IF;
    IF v_signs IS NULL THEN
        RETURN NULL;
    END IF;

    INSERT INTO user_dashboard_stats_delta (user_id, unread_messages)
    SELECT c.recipient_id, sum(c.sign)
    FROM unnest(v_signs, v_recipients, v_unread) AS c(sign, recipient_id, unread)
    WHERE c.unread
    GROUP BY c.recipient_id
    HAVING sum(c.sign) <> 0;

    -- Conversation rows touched, in key order.
    SELECT array_agg(k.user_id ORDER BY k.user_id, k.other_user_id),
           array_agg(k.other_user_id ORDER BY k.user_id, k.other_user_id)
    INTO v_key_users, v_key_others
    FROM (SELECT c.sender_id AS user_id, c.recipient_id AS other_user_id
          FROM unnest(v_senders, v_recipients) AS c(sender_id, recipient_id)
          UNION
          SELECT c.recipient_id, c.sender_id
          FROM unnest(v_senders, v_recipients) AS c(sender_id, recipient_id)) AS k;

    -- Step 1: lock them all in key order; a missing row is created as a placeholder
    -- (last_message_id NULL). WHERE false: lock the existing row without writing it.
    INSERT INTO message_conversations_denorm AS cv (user_id, other_user_id)
    SELECT k.user_id, k.other_user_id
    FROM unnest(v_key_users, v_key_others) WITH ORDINALITY AS k(user_id, other_user_id, n)
    ORDER BY k.n
    ON CONFLICT (user_id, other_user_id) DO UPDATE SET message_count = cv.message_count
    WHERE false;

    -- Step 2: rows that existed: apply the changes (new snapshot, all rows locked by us).
    WITH ch AS (
        SELECT *
        FROM unnest(v_signs, v_ids, v_senders, v_recipients, v_sent_at, v_unread, v_previews)
             AS c(sign, id, sender_id, recipient_id, created_at, unread, preview)
    ), per_row AS (
        SELECT sender_id AS user_id, recipient_id AS other_user_id, sign, id, created_at,
               sender_id, preview, 0 AS unread_delta
        FROM ch
        UNION ALL
        SELECT recipient_id, sender_id, sign, id, created_at, sender_id, preview,
               CASE WHEN unread THEN sign ELSE 0 END
        FROM ch
    ), lastrel_old AS (
        SELECT user_id, other_user_id, id, created_at, sender_id, preview
        FROM per_row WHERE sign < 0
    ), lastrel_new AS (
        SELECT user_id, other_user_id, id, created_at, sender_id, preview
        FROM per_row WHERE sign > 0
    ), removed AS (
        -- messages that left the pair or whose last_message_* fields changed
        SELECT user_id, other_user_id, array_agg(id) AS ids
        FROM (SELECT * FROM lastrel_old EXCEPT SELECT * FROM lastrel_new) AS r
        GROUP BY user_id, other_user_id
    ), candidate AS (
        SELECT DISTINCT ON (user_id, other_user_id)
               user_id, other_user_id, id, created_at, sender_id, preview
        FROM (SELECT * FROM lastrel_new EXCEPT SELECT * FROM lastrel_old) AS a
        ORDER BY user_id, other_user_id, created_at DESC, id DESC
    ), agg AS (
        SELECT user_id, other_user_id, sum(sign) AS d_count, sum(unread_delta) AS d_unread
        FROM per_row
        GROUP BY user_id, other_user_id
    ), todo AS (
        SELECT a.user_id, a.other_user_id, a.d_count, a.d_unread,
               coalesce(r.ids, '{}') AS removed_ids,
               n.id AS c_id, n.created_at AS c_at, n.sender_id AS c_sender, n.preview AS c_preview
        FROM agg a
        LEFT JOIN removed r USING (user_id, other_user_id)
        LEFT JOIN candidate n USING (user_id, other_user_id)
    )
    UPDATE message_conversations_denorm AS cv
    SET message_count = cv.message_count + t.d_count,
        unread_count = cv.unread_count + t.d_unread,
        (last_message_id, last_message_at, last_message_sender_id, last_message_preview) = (
            SELECT l.id, l.created_at, l.sender_id, l.preview
            FROM (
                -- the current last message, unless it left or changed
                SELECT cv.last_message_id AS id, cv.last_message_at AS created_at,
                       cv.last_message_sender_id AS sender_id, cv.last_message_preview AS preview
                WHERE NOT (cv.last_message_id = ANY (t.removed_ids))
                UNION ALL
                -- the newest message this statement added or changed
                SELECT t.c_id, t.c_at, t.c_sender, t.c_preview
                WHERE t.c_id IS NOT NULL
                UNION ALL
                -- the newest message of the pair, read again when the last one left or changed
                (SELECT m.id, m.created_at, m.sender_id, left(m.body, 100)
                 FROM messages m
                 WHERE cv.last_message_id = ANY (t.removed_ids)
                   AND ((m.sender_id = cv.user_id AND m.recipient_id = cv.other_user_id)
                     OR (m.sender_id = cv.other_user_id AND m.recipient_id = cv.user_id))
                 ORDER BY m.created_at DESC, m.id DESC
                 LIMIT 1)
            ) AS l
            ORDER BY l.created_at DESC, l.id DESC
            LIMIT 1)
    FROM todo t
    WHERE cv.user_id = t.user_id AND cv.other_user_id = t.other_user_id
      AND cv.last_message_id IS NOT NULL;

    -- Step 3: placeholders (pairs new to the table): compute them in full from messages.
    UPDATE message_conversations_denorm AS cv
    SET message_count = (
            SELECT count(*) FROM messages m
            WHERE (m.sender_id = cv.user_id AND m.recipient_id = cv.other_user_id)
               OR (m.sender_id = cv.other_user_id AND m.recipient_id = cv.user_id)),
        unread_count = (
            SELECT count(*) FROM messages m
            WHERE m.sender_id = cv.other_user_id AND m.recipient_id = cv.user_id
              AND m.read_at IS NULL),
        (last_message_id, last_message_at, last_message_sender_id, last_message_preview) = (
            SELECT m.id, m.created_at, m.sender_id, left(m.body, 100)
            FROM messages m
            WHERE (m.sender_id = cv.user_id AND m.recipient_id = cv.other_user_id)
               OR (m.sender_id = cv.other_user_id AND m.recipient_id = cv.user_id)
            ORDER BY m.created_at DESC, m.id DESC
            LIMIT 1)
    FROM unnest(v_key_users, v_key_others) AS k(user_id, other_user_id)
    WHERE cv.user_id = k.user_id AND cv.other_user_id = k.other_user_id
      AND cv.last_message_id IS NULL;

    -- Step 4: pairs without messages left.
    DELETE FROM message_conversations_denorm AS cv
    USING unnest(v_key_users, v_key_others) AS k(user_id, other_user_id)
    WHERE cv.user_id = k.user_id AND cv.other_user_id = k.other_user_id
      AND (cv.message_count <= 0 OR cv.last_message_id IS NULL);
    RETURN NULL;
END
$fn$;

-- ------------------------------------------------------------------ triggers
-- Created here, before phase1_backfill_data runs, so no write made during the backfill is missed.

CREATE CONSTRAINT TRIGGER trg_opskit_users_del AFTER DELETE ON users
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION opskit_trg_users_gone();
CREATE CONSTRAINT TRIGGER trg_opskit_users_upd AFTER UPDATE OF id ON users
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id)
    EXECUTE FUNCTION opskit_trg_users_gone();

CREATE TRIGGER trg_opskit_projects_ins AFTER INSERT ON projects
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION opskit_trg_projects();
CREATE TRIGGER trg_opskit_projects_upd AFTER UPDATE ON projects
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION opskit_trg_projects();
CREATE TRIGGER trg_opskit_projects_before_del BEFORE DELETE ON projects
    FOR EACH ROW EXECUTE FUNCTION opskit_trg_projects_before_delete();

CREATE TRIGGER trg_opskit_votes_ins AFTER INSERT ON votes
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION opskit_trg_votes();
CREATE TRIGGER trg_opskit_votes_upd AFTER UPDATE ON votes
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION opskit_trg_votes();
CREATE TRIGGER trg_opskit_votes_del AFTER DELETE ON votes
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION opskit_trg_votes();

CREATE TRIGGER trg_opskit_comments_ins AFTER INSERT ON comments
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION opskit_trg_comments();
CREATE TRIGGER trg_opskit_comments_upd AFTER UPDATE ON comments
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION opskit_trg_comments();
CREATE TRIGGER trg_opskit_comments_del AFTER DELETE ON comments
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION opskit_trg_comments();

CREATE TRIGGER trg_opskit_follows_ins AFTER INSERT ON follows
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION opskit_trg_follows();
CREATE TRIGGER trg_opskit_follows_upd AFTER UPDATE ON follows
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION opskit_trg_follows();
CREATE TRIGGER trg_opskit_follows_del AFTER DELETE ON follows
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION opskit_trg_follows();

CREATE TRIGGER trg_opskit_messages_ins AFTER INSERT ON messages
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION opskit_trg_messages();
CREATE TRIGGER trg_opskit_messages_upd AFTER UPDATE ON messages
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION opskit_trg_messages();
CREATE TRIGGER trg_opskit_messages_del AFTER DELETE ON messages
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION opskit_trg_messages();

CREATE TRIGGER trg_opskit_intro_requests_ins AFTER INSERT ON intro_requests
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION opskit_trg_intro_requests();
CREATE TRIGGER trg_opskit_intro_requests_upd AFTER UPDATE ON intro_requests
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION opskit_trg_intro_requests();
CREATE TRIGGER trg_opskit_intro_requests_del AFTER DELETE ON intro_requests
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION opskit_trg_intro_requests();
