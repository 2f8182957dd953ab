SET lock_timeout = '500ms';  -- below deadlock_timeout (1s): the migration gives way
SET statement_timeout = '15min';

-- phase1_denormalized_tables: the three denormalized relations of docs/interface.md §6 and the
-- triggers that keep them equal to their truth (opskit/sql/truth.sql) at every commit, for every
-- write path of the app, from many READ COMMITTED connections at once.
--
-- Relations readers query
--   user_dashboard_stats          VIEW  = users LEFT JOIN base + pending deltas
--                                         LEFT JOIN (own live projects JOIN project_stats)
--   intro_request_stats           VIEW  = users LEFT JOIN base LEFT JOIN sum(pending deltas)
--   message_conversations_denorm  TABLE maintained row by row by the messages trigger
--   project_stats                 VIEW  = projects LEFT JOIN base + pending deltas (per-project
--                                         upvotes, downvotes, comments; the dashboard reads it)
--
-- 1. Append-only deltas
--    Triggers never UPDATE a counter row: every write appends signed delta rows to *_delta. A
--    popular builder therefore is no hot row: thousands of concurrent votes on their project
--    insert thousands of independent rows and nobody waits for anybody. The views add base +
--    sum(deltas); opskit_fold_*_deltas() moves deltas into the base rows in the background (one
--    statement: DELETE the claimed deltas ... RETURNING, aggregated into upserts of base), so
--    readers see either the deltas or their sum in base, never both and never neither.
--    intro_request_stats uses the same design although intros are low volume: a direct upsert
--    would lock the requester's and the target's rows until commit, and two transactions
--    touching the same two users in different statement orders could deadlock. With deltas an
--    intro write takes no lock at all, and fold/backfill are the same code as the dashboard's.
--    No delta table has a foreign key: an FK check on every delta would lock the user or project
--    row (KEY SHARE) and fail when the delta belongs to a row deleted in the same statement
--    (cascades). Instead a DEFERRED constraint trigger on users deletes the base and delta rows
--    of a deleted user at commit (see opskit_trg_users_gone below), and rows of hard-deleted
--    projects are ignored by project_stats (it is driven by `projects`) and dropped by the fold
--    and the backfill.
--
-- 2. Votes and comments count per PROJECT; owner and live state are joined at read time
--    A vote or comment only ever changes facts about its own row: its project gained or lost
--    an up/down vote or a comment, its voter cast one vote more or less. The vote trigger writes
--    exactly that, ONE row per vote into project_stats_delta (project_id, voter_id, upvotes,
--    downvotes; votes_cast of the voter is upvotes + downvotes), the comment trigger one row
--    (project_id, comments). Whose project it is and whether it is live are read from
--    `projects` when user_dashboard_stats is queried, in the reader's snapshot:
--      upvotes_received(u) = sum of project_stats.upvotes over u's projects with deleted_at null
--    (likewise downvotes, comments; projects_count is the count of those projects). So:
--      * a vote needs no owner lookup, no project lock, and no ordering with project writes:
--        soft delete, restore, owner move and hard delete of a project write no delta at all
--        (projects has no phase1 trigger), and no write path can deadlock on phase1's account;
--      * the per-vote cost is one plpgsql row-trigger call and one heap row + two index entries:
--        about 30 us of server CPU per vote on the hot key, where the first design (statement
--        triggers with transition tables, owner lookup, FOR SHARE project lock, a projects
--        trigger moving owners' counts) took about 90 us (docs/measurements.md, "Write cost").
--    A single user's row stays a few index lookups: users, base and delta by user_id, the
--    user's projects by projects_owner_id_idx, each project's base row and pending deltas.
--
-- 3. message_conversations_denorm is a plain table (last_message_* are not additive; two
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
-- 4. Trigger shapes
--    votes and comments (the hot paths) have ROW-level AFTER triggers: the app writes one row
--    per statement, and a row trigger reads NEW/OLD directly where a statement trigger has to
--    build and scan transition tables; it also never fires for a statement that changed no row
--    (an upsert that hit the same vote, a delete that found nothing). UPDATE triggers list the
--    columns they depend on (UPDATE OF ...), so an update of other columns does not even call
--    the function; the comments trigger adds a WHEN clause, the votes trigger (hot: every
--    flip) checks inside the function instead, which is cheaper (see there). Multi-row
--    statements fire once per row; deltas are additive, so that is exact, just slower for bulk
--    statements the app never runs.
--    follows, messages and intro_requests keep statement-level AFTER triggers with transition
--    tables (one per event): an UPDATE only counts rows whose relevant columns changed (NEW
--    EXCEPT ALL OLD over those columns) and returns early when nothing relevant changed.
--    Lock order: the vote, comment, follow and intro triggers take no row lock at all; the
--    messages trigger locks conversation rows in key order; the fold locks base rows in key
--    order and folds run one at a time. So the app's write paths never deadlock on phase1's
--    account (tests/integration/test_phase1_exactness.py counts).

-- ------------------------------------------------------------------ user_dashboard_stats

-- The per-user columns. projects_count and the *_received columns come from project_stats.
-- The base tables are half empty on purpose (fillfactor 50): every fold updates the base row of
-- each user and project it folds, and with room on the page those updates stay HOT (no new
-- index entry, less WAL). Packed full, nearly every fold update moved its row to another page:
-- about 10k instructions more per folded vote (docs/measurements.md, "Write cost").
CREATE TABLE user_dashboard_stats_base (
    user_id                 bigint PRIMARY KEY,
    votes_cast              bigint NOT NULL DEFAULT 0,
    followers_count         bigint NOT NULL DEFAULT 0,
    following_count         bigint NOT NULL DEFAULT 0,
    unread_messages         bigint NOT NULL DEFAULT 0,
    pending_intros_received bigint NOT NULL DEFAULT 0
) WITH (fillfactor = 50);

-- Append-only; rows are only ever inserted (triggers) and deleted (fold, user deletion).
CREATE TABLE user_dashboard_stats_delta (
    user_id                 bigint NOT NULL,
    votes_cast              bigint NOT NULL DEFAULT 0,
    followers_count         bigint NOT NULL DEFAULT 0,
    following_count         bigint NOT NULL DEFAULT 0,
    unread_messages         bigint NOT NULL DEFAULT 0,
    pending_intros_received bigint NOT NULL DEFAULT 0
) WITH (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_insert_scale_factor = 0.02);
CREATE INDEX user_dashboard_stats_delta_user_id_idx ON user_dashboard_stats_delta (user_id);

-- Per project, soft-deleted ones included (a restore brings their counts back).
CREATE TABLE project_stats_base (
    project_id bigint PRIMARY KEY,
    upvotes    bigint NOT NULL DEFAULT 0,
    downvotes  bigint NOT NULL DEFAULT 0,
    comments   bigint NOT NULL DEFAULT 0
) WITH (fillfactor = 50);

-- One row per vote or comment change (section 2). voter_id is the user whose votes_cast moves
-- by upvotes + downvotes (NULL for comments); append-only like user_dashboard_stats_delta.
CREATE TABLE project_stats_delta (
    project_id bigint NOT NULL,
    voter_id   bigint,
    upvotes    integer NOT NULL DEFAULT 0,
    downvotes  integer NOT NULL DEFAULT 0,
    comments   integer NOT NULL DEFAULT 0
) WITH (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_insert_scale_factor = 0.02);
CREATE INDEX project_stats_delta_project_id_idx ON project_stats_delta (project_id);
CREATE INDEX project_stats_delta_voter_id_idx ON project_stats_delta (voter_id)
    WHERE voter_id IS NOT NULL;

-- LATERAL: one index probe per project, so a user's row (a few projects) never aggregates the
-- whole pending delta table.
CREATE OR REPLACE VIEW project_stats AS
SELECT p.id AS project_id,
       (coalesce(b.upvotes, 0) + coalesce(d.upvotes, 0))::bigint AS upvotes,
       (coalesce(b.downvotes, 0) + coalesce(d.downvotes, 0))::bigint AS downvotes,
       (coalesce(b.comments, 0) + coalesce(d.comments, 0))::bigint AS comments
FROM projects p
LEFT JOIN project_stats_base b ON b.project_id = p.id
CROSS JOIN LATERAL (
    SELECT sum(pd.upvotes) AS upvotes, sum(pd.downvotes) AS downvotes,
           sum(pd.comments) AS comments
    FROM project_stats_delta pd
    WHERE pd.project_id = p.id
) d;

-- Driven by `users`, so exactly one row per existing user (zeros for a user without rows);
-- `WHERE user_id = $1` pushes the key into every subquery (test: ..._single_lookups_use_indexes).
CREATE OR REPLACE VIEW user_dashboard_stats AS
SELECT u.id AS user_id,
       coalesce(pr.projects_count, 0)::bigint AS projects_count,
       coalesce(pr.upvotes_received, 0)::bigint AS upvotes_received,
       coalesce(pr.downvotes_received, 0)::bigint AS downvotes_received,
       coalesce(pr.comments_received, 0)::bigint AS comments_received,
       (coalesce(b.votes_cast, 0) + coalesce(d.votes_cast, 0) + coalesce(vd.votes_cast, 0))::bigint
           AS votes_cast,
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
           sum(votes_cast) AS votes_cast,
           sum(followers_count) AS followers_count,
           sum(following_count) AS following_count,
           sum(unread_messages) AS unread_messages,
           sum(pending_intros_received) AS pending_intros_received
    FROM user_dashboard_stats_delta
    GROUP BY user_id
) d ON d.user_id = u.id
LEFT JOIN (
    SELECT voter_id, sum(upvotes + downvotes) AS votes_cast
    FROM project_stats_delta
    WHERE voter_id IS NOT NULL
    GROUP BY voter_id
) vd ON vd.voter_id = u.id
LEFT JOIN (
    SELECT p.owner_id,
           count(*) AS projects_count,
           sum(s.upvotes) AS upvotes_received,
           sum(s.downvotes) AS downvotes_received,
           sum(s.comments) AS comments_received
    FROM projects p
    JOIN project_stats s ON s.project_id = p.id
    WHERE p.deleted_at IS NULL
    GROUP BY p.owner_id
) pr ON pr.owner_id = u.id;

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
) WITH (fillfactor = 50);  -- HOT fold updates, as user_dashboard_stats_base

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

-- ------------------------------------------------------------------ touched keys

-- The keys touched since the last `opskit reconcile --changed` (docs/engine.md, "Reconcile").
-- Written off the app's hot write path: the folds below record the users and projects of the
-- delta rows they consume ('user', 'project'), the daemon's refresh records the view keys it
-- applies (entity = the view, kind = the key's kind) and the owners and users of the change log
-- it routes ('user'); only the messages trigger writes here from the app's transactions, one
-- row per conversation it changes ('conversation', lo, hi: the two users, lower id first),
-- because a message whose change moves no unread count reaches no delta. The unique key
-- collapses repeated touches. A check marks the rows it takes `claimed`, and at its end
-- deletes the claimed rows it found consistent; a touch during the check sets `claimed` back
-- to false (so the row stays for the next check), and a check that dies leaves its rows
-- claimed for the next one. Every writer inserts in key order, so none deadlocks another.
CREATE TABLE opskit_reconcile_keys (
    entity     text NOT NULL,
    kind       text NOT NULL DEFAULT '',
    entity_id  bigint NOT NULL,
    other_id   bigint NOT NULL DEFAULT 0,
    claimed    boolean NOT NULL DEFAULT false,
    touched_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (entity, kind, entity_id, other_id)
) WITH (fillfactor = 70,  -- claiming a row updates `claimed` only: HOT, no new index entry
        autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_insert_scale_factor = 0.02);

-- ------------------------------------------------------------------ fold

-- Moves up to max_rows pending deltas (user_dashboard_stats_delta first, then
-- project_stats_delta) into the base rows; returns how many it moved. Safe while writers go on:
-- claimed rows are locked (SKIP LOCKED: a fold never waits for the users trigger deleting a
-- deleted user's rows), deleted and added to base in one statement, so they are counted once,
-- either as deltas or in base. One fold runs at a time (a second one returns 0 at once): a fold
-- locks user base rows and project base rows, each in key order, and two at once could still
-- wait for each other across the two tables. Parts of deleted users and projects are dropped,
-- not folded (their base rows go too). While a backfill holds the exclusive advisory lock the
-- fold does nothing and returns 0 (call it again later).
CREATE OR REPLACE FUNCTION opskit_fold_user_dashboard_deltas(max_rows integer DEFAULT 10000)
RETURNS bigint
LANGUAGE plpgsql
AS $fn$
DECLARE
    v_folded bigint;
BEGIN
    IF NOT pg_try_advisory_xact_lock_shared(1869640555, 11)
       OR NOT pg_try_advisory_xact_lock(1869640555, 13) THEN
        RETURN 0;
    END IF;
    WITH user_moved AS (
        DELETE FROM user_dashboard_stats_delta
        WHERE ctid = ANY (ARRAY(
            SELECT ctid FROM user_dashboard_stats_delta LIMIT max_rows FOR UPDATE SKIP LOCKED
        ))
        RETURNING user_id, votes_cast, followers_count, following_count, unread_messages,
                  pending_intros_received
    ), project_moved AS (
        DELETE FROM project_stats_delta
        WHERE ctid = ANY (ARRAY(
            SELECT ctid FROM project_stats_delta
            LIMIT greatest(max_rows - (SELECT count(*) FROM user_moved), 0)
            FOR UPDATE SKIP LOCKED
        ))
        RETURNING project_id, voter_id, upvotes, downvotes, comments
    ), user_agg AS (
        SELECT m.user_id,
               sum(m.votes_cast) AS votes_cast,
               sum(m.followers_count) AS followers_count,
               sum(m.following_count) AS following_count,
               sum(m.unread_messages) AS unread_messages,
               sum(m.pending_intros_received) AS pending_intros_received
        FROM (
            SELECT user_id, votes_cast, followers_count, following_count, unread_messages,
                   pending_intros_received
            FROM user_moved
            UNION ALL
            SELECT voter_id, upvotes + downvotes, 0, 0, 0, 0
            FROM project_moved
            WHERE voter_id IS NOT NULL
        ) AS m
        GROUP BY m.user_id
    ), project_agg AS (
        SELECT project_id, sum(upvotes) AS upvotes, sum(downvotes) AS downvotes,
               sum(comments) AS comments
        FROM project_moved
        GROUP BY project_id
    ), user_applied AS (
        INSERT INTO user_dashboard_stats_base AS b (
            user_id, votes_cast, followers_count, following_count, unread_messages,
            pending_intros_received)
        SELECT a.user_id, a.votes_cast, a.followers_count, a.following_count,
               a.unread_messages, a.pending_intros_received
        FROM user_agg a
        WHERE EXISTS (SELECT 1 FROM users u WHERE u.id = a.user_id)
          -- a vote flipped (or cast and taken back) moves no count: no row version for +0
          AND (a.votes_cast, a.followers_count, a.following_count, a.unread_messages,
               a.pending_intros_received) <> (0, 0, 0, 0, 0)
        ORDER BY a.user_id
        ON CONFLICT (user_id) DO UPDATE SET
            votes_cast = b.votes_cast + EXCLUDED.votes_cast,
            followers_count = b.followers_count + EXCLUDED.followers_count,
            following_count = b.following_count + EXCLUDED.following_count,
            unread_messages = b.unread_messages + EXCLUDED.unread_messages,
            pending_intros_received = b.pending_intros_received + EXCLUDED.pending_intros_received
        RETURNING 1
    ), project_applied AS (
        INSERT INTO project_stats_base AS b (project_id, upvotes, downvotes, comments)
        SELECT a.project_id, a.upvotes, a.downvotes, a.comments
        FROM project_agg a
        WHERE EXISTS (SELECT 1 FROM projects p WHERE p.id = a.project_id)
        ORDER BY a.project_id
        ON CONFLICT (project_id) DO UPDATE SET
            upvotes = b.upvotes + EXCLUDED.upvotes,
            downvotes = b.downvotes + EXCLUDED.downvotes,
            comments = b.comments + EXCLUDED.comments
        RETURNING 1
    ), projects_gone AS (
        DELETE FROM project_stats_base b
        USING project_agg a
        WHERE b.project_id = a.project_id
          AND NOT EXISTS (SELECT 1 FROM projects p WHERE p.id = a.project_id)
        RETURNING 1
    ), keys_touched AS (
        -- for `opskit reconcile --changed`: every user and project these deltas touched, in
        -- key order (the order of every writer of opskit_reconcile_keys)
        INSERT INTO opskit_reconcile_keys (entity, entity_id)
        SELECT k.entity, k.id
        FROM (SELECT 'project' AS entity, project_id AS id FROM project_agg
              UNION ALL
              SELECT 'user', user_id FROM user_agg) AS k
        ORDER BY k.entity, k.id
        ON CONFLICT (entity, kind, entity_id, other_id) DO UPDATE SET claimed = false
        WHERE opskit_reconcile_keys.claimed
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM user_moved) + (SELECT count(*) FROM project_moved)
    INTO v_folded;
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
    ), keys_touched AS (
        -- for `opskit reconcile --changed` (see opskit_fold_user_dashboard_deltas)
        INSERT INTO opskit_reconcile_keys (entity, entity_id)
        SELECT 'user', a.user_id FROM agg a ORDER BY a.user_id
        ON CONFLICT (entity, kind, entity_id, other_id) DO UPDATE SET claimed = false
        WHERE opskit_reconcile_keys.claimed
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
-- statement triggers), and they still add deltas for the deleted user (e.g. followers_count,
-- and votes_cast through the voter_id of the cascaded votes' project_stats_delta rows); and a
-- concurrent transaction whose write conflicted with one of the cascaded deletes has committed
-- by then (the cascade waited for it), so its deltas for this user are visible here too. Later
-- transactions cannot add any: every write that produces a delta for a user references the user
-- or one of their rows and waits for, then fails against, the delete.
-- project_stats_delta rows of the user's votes still count for their projects: only their voter
-- part is dropped (voter_id := NULL).
-- Limitation: deleting a user and re-creating the same id in ONE transaction drops the new
-- user's deltas of that transaction too (ids are identities; the app never reuses them).
CREATE OR REPLACE FUNCTION opskit_trg_users_gone() RETURNS trigger
LANGUAGE plpgsql
AS $fn$
BEGIN
    -- Delta rows first, base rows last: the same order as the fold functions (they lock delta
    -- rows, then upsert base rows). Deleting a base row first deadlocked with a fold holding
    -- this user's delta rows and waiting for that base row (found by `opskit soak`).
    DELETE FROM user_dashboard_stats_delta WHERE user_id = OLD.id;
    UPDATE project_stats_delta SET voter_id = NULL WHERE voter_id = OLD.id;
    DELETE FROM intro_request_stats_delta WHERE user_id = OLD.id;
    DELETE FROM user_dashboard_stats_base WHERE user_id = OLD.id;
    DELETE FROM intro_request_stats_base WHERE user_id = OLD.id;
    DELETE FROM message_conversations_denorm
    WHERE user_id = OLD.id OR other_user_id = OLD.id;
    RETURN NULL;
END
$fn$;

-- votes, per row (sections 2 and 4): the project's up/down votes and the voter's votes_cast,
-- as one project_stats_delta row per side of the change. A flip is one row (-1 up, +1 down).
-- One function per event, each a single INSERT: every plpgsql expression is set up again in
-- each transaction, and a vote is its own transaction, so a branch on TG_OP costs every vote.
CREATE OR REPLACE FUNCTION opskit_trg_votes_insert() RETURNS trigger
LANGUAGE plpgsql
AS $fn$
BEGIN
    INSERT INTO project_stats_delta (project_id, voter_id, upvotes, downvotes)
    VALUES (NEW.project_id, NEW.user_id,
            (NEW.vote_type = 'up')::int, (NEW.vote_type = 'down')::int);
    RETURN NULL;
END
$fn$;

CREATE OR REPLACE FUNCTION opskit_trg_votes_delete() RETURNS trigger
LANGUAGE plpgsql
AS $fn$
BEGIN
    INSERT INTO project_stats_delta (project_id, voter_id, upvotes, downvotes)
    VALUES (OLD.project_id, OLD.user_id,
            -(OLD.vote_type = 'up')::int, -(OLD.vote_type = 'down')::int);
    RETURN NULL;
END
$fn$;

-- No WHEN clause on its trigger: PostgreSQL rebuilds a trigger's WHEN expression from its
-- stored text in every statement (about 29k instructions for this row comparison, more than
-- the whole function), so the no-op check is the function's. The app's upsert only ever
-- updates a vote whose type changes; the key-moving branch is for hand-written updates.
CREATE OR REPLACE FUNCTION opskit_trg_votes_update() RETURNS trigger
LANGUAGE plpgsql
AS $fn$
BEGIN
    IF NEW.user_id = OLD.user_id AND NEW.project_id = OLD.project_id THEN
        IF NEW.vote_type IS DISTINCT FROM OLD.vote_type THEN
            INSERT INTO project_stats_delta (project_id, voter_id, upvotes, downvotes)
            VALUES (NEW.project_id, NEW.user_id,
                    (NEW.vote_type = 'up')::int - (OLD.vote_type = 'up')::int,
                    (NEW.vote_type = 'down')::int - (OLD.vote_type = 'down')::int);
        END IF;
    ELSE
        INSERT INTO project_stats_delta (project_id, voter_id, upvotes, downvotes)
        VALUES (OLD.project_id, OLD.user_id,
                -(OLD.vote_type = 'up')::int, -(OLD.vote_type = 'down')::int),
               (NEW.project_id, NEW.user_id,
                (NEW.vote_type = 'up')::int, (NEW.vote_type = 'down')::int);
    END IF;
    RETURN NULL;
END
$fn$;

-- comments, per row: the project's comments. Only project_id matters (the author counts nowhere).
CREATE OR REPLACE FUNCTION opskit_trg_comments() RETURNS trigger
LANGUAGE plpgsql
AS $fn$
BEGIN
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO project_stats_delta (project_id, comments) VALUES (NEW.project_id, 1);
    END IF;
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        INSERT INTO project_stats_delta (project_id, comments) VALUES (OLD.project_id, -1);
    END IF;
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

-- messages: unread_messages of the recipient, and message_conversations_denorm (section 3).
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
        -- each message once per side of its pair; a message to oneself has one side (user =
        -- other), where it is also the unread one
        SELECT sender_id AS user_id, recipient_id AS other_user_id, sign, id, created_at,
               sender_id, preview,
               CASE WHEN unread AND recipient_id = sender_id THEN sign ELSE 0 END AS unread_delta
        FROM ch
        UNION ALL
        SELECT recipient_id, sender_id, sign, id, created_at, sender_id, preview,
               CASE WHEN unread THEN sign ELSE 0 END
        FROM ch
        WHERE recipient_id <> sender_id
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

    -- Step 5: the pairs, for `opskit reconcile --changed` (no delta records a change that
    -- moves no unread count). After the pair locks: no two writers insert the same pair.
    INSERT INTO opskit_reconcile_keys (entity, entity_id, other_id)
    SELECT DISTINCT 'conversation', least(k.user_id, k.other_user_id) AS lo,
           greatest(k.user_id, k.other_user_id) AS hi
    FROM unnest(v_key_users, v_key_others) AS k(user_id, other_user_id)
    ORDER BY lo, hi
    ON CONFLICT (entity, kind, entity_id, other_id) DO UPDATE SET claimed = false
    WHERE opskit_reconcile_keys.claimed;
    RETURN NULL;
END
$fn$;

-- ------------------------------------------------------------------ triggers
-- Created here, before phase1_backfill_data runs, so no write made during the backfill is missed.

-- The tables that get triggers, locked together, parents before children (the one order of
-- every opskit LOCK), in the mode CREATE TRIGGER takes. The runner bounds this locked section by
-- lock_timeout (docs/migrations.md).
LOCK TABLE users, votes, comments, follows, messages, intro_requests IN SHARE ROW EXCLUSIVE MODE;

CREATE CONSTRAINT TRIGGER trg_opskit_users_del AFTER DELETE ON users
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION opskit_trg_users_gone();
CREATE CONSTRAINT TRIGGER trg_opskit_users_upd AFTER UPDATE OF id ON users
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id)
    EXECUTE FUNCTION opskit_trg_users_gone();

CREATE TRIGGER trg_opskit_votes_ins AFTER INSERT ON votes
    FOR EACH ROW EXECUTE FUNCTION opskit_trg_votes_insert();
CREATE TRIGGER trg_opskit_votes_upd AFTER UPDATE OF user_id, project_id, vote_type ON votes
    FOR EACH ROW EXECUTE FUNCTION opskit_trg_votes_update();
CREATE TRIGGER trg_opskit_votes_del AFTER DELETE ON votes
    FOR EACH ROW EXECUTE FUNCTION opskit_trg_votes_delete();

CREATE TRIGGER trg_opskit_comments_ins AFTER INSERT ON comments
    FOR EACH ROW EXECUTE FUNCTION opskit_trg_comments();
CREATE TRIGGER trg_opskit_comments_upd AFTER UPDATE OF project_id ON comments
    FOR EACH ROW WHEN (OLD.project_id IS DISTINCT FROM NEW.project_id)
    EXECUTE FUNCTION opskit_trg_comments();
CREATE TRIGGER trg_opskit_comments_del AFTER DELETE ON comments
    FOR EACH ROW EXECUTE FUNCTION opskit_trg_comments();

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
