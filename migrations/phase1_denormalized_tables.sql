SET lock_timeout = '500ms';  -- below deadlock_timeout (1s): the migration gives way
SET statement_timeout = '15min';

-- phase1_denormalized_tables: the three denormalized relations of docs/interface.md §6 and the
-- triggers that keep them equal to their truth (opskit/sql/truth.sql) at every commit, for every
-- write path of the app, from many READ COMMITTED connections at once.
--
-- Relations readers query
--   user_dashboard_stats          VIEW  = users LEFT JOIN base + pending deltas
--                                         LEFT JOIN (pending project deltas, per live owner)
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
-- 2. Votes and comments count per PROJECT; the owner takes them when they are folded
--    A vote or comment only ever changes facts about its own row: its project gained or lost
--    an up/down vote or a comment, its voter cast one vote more or less. The vote trigger writes
--    exactly that, ONE row per vote into project_stats_delta (project_id, voter_id, upvotes,
--    downvotes; votes_cast of the voter is upvotes + downvotes), the comment trigger one row
--    (project_id, comments). So:
--      * a vote needs no owner lookup and no project lock, and waits for nobody;
--      * the per-vote cost is one plpgsql row-trigger call and one heap row + two index entries:
--        about 30 us of server CPU per vote on the hot key, where the first design (statement
--        triggers with transition tables, owner lookup, FOR SHARE project lock, a projects
--        trigger moving owners' counts) took about 90 us (docs/measurements.md, "Write cost").
--    Whose project it is and whether it is live matter only for the owner columns; section 5.
--
-- 3. message_conversations_denorm is a plain table (last_message_* are not additive; two
--    transactions writing the same pair at the same moment are rare). The messages trigger runs
--    per row and applies the message's old and new version to each row of its pair, in key
--    order (opskit_conversation_apply). Counts only ever move by the change (+1/-1): a row
--    trigger of a multi-row statement sees the rows of the whole statement, including those
--    whose triggers have yet to run, so a count computed from `messages` there would count
--    them twice. The newest message may be read again, because taking the newest is
--    idempotent. So:
--      * a message joins a pair: one upsert (count +1, last_message_* to the newer of the two).
--        It waits for an uncommitted row of the pair and then reads its newest version;
--      * a message leaves or changes, the row's last message stays: one UPDATE, likewise;
--      * the last message left or changed: the trigger locks the row first (INSERT ... ON
--        CONFLICT DO UPDATE ... WHERE false: waits for an uncommitted row, locks a committed
--        one without writing, creates a placeholder for a missing one), then, in a new
--        statement whose READ COMMITTED snapshot is taken after the lock, moves the counts and
--        reads the pair's newest message from `messages`; a row left without messages, or the
--        placeholder, is deleted.
--    A row is only ever written by a transaction holding its lock, and a transaction that
--    changes messages of a pair locks the pair's rows before it commits. So when we read
--    `messages` after locking, every committed change of the pair is already in the row, and
--    every uncommitted one is invisible to us and will be applied on top of our result by its
--    own transaction once we commit. Pairs that have messages from before phase1 are counted by
--    the backfill (it locks the same rows and computes them in full from `messages` in a
--    snapshot taken after its locks): their rows are exact once the backfill has passed their
--    users, and rows of pairs that start later are exact from their creation on.

-- 4. Trigger shapes
--    Every trigger is a ROW-level AFTER trigger: the app writes one row per statement, and a
--    row trigger reads NEW/OLD directly where a statement trigger has to build and scan
--    transition tables (the statement-level design cost a message 6.9M instructions, this one
--    0.55M; an intro or a follow cost about a third more than now); it also never fires for a statement that changed no row (an
--    upsert that hit the same vote, a delete that found nothing). UPDATE triggers list the
--    columns they depend on (UPDATE OF ...), so an update of other columns does not even call
--    the function; the comments trigger adds a WHEN clause, the votes and messages triggers
--    check inside the function instead, which is cheaper (see the votes trigger). Multi-row
--    statements fire once per row; deltas are additive, so that is exact, just slower for bulk
--    statements the app never runs.
--    Lock order: the vote, comment, follow and intro triggers take no row lock at all; the
--    messages trigger locks the two rows of its pair in key order; the projects trigger locks its own
--    project's base row only (section 5); the fold skips locked project base rows, locks user
--    base rows in key order, and folds run one at a time. So the app's write paths never deadlock on phase1's
--    account (tests/integration/test_phase1_exactness.py counts).
--
-- 5. Owner totals: projects_count and *_received, folded per owner
--    upvotes_received(u) = sum of project_stats.upvotes over u's projects with deleted_at null
--    (likewise downvotes, comments; projects_count counts those projects). Summing that per read
--    made a read cost the owner's project count (51 ms p50 at `large` for a 10,000-project
--    owner). Instead user_dashboard_stats_base holds, per user, owner totals T(u) with
--      T(u) + pending owner deltas(u) = sum over u's LIVE projects p of (1, base(p))
--    where base(p) is project_stats_base (FOLDED counts), and the view adds only the pending
--    project_stats_delta rows of u's live projects, found from the pending rows themselves (each
--    pending project's owner and state by a primary-key probe), never from u's project list.
--    Since project_stats(p) = base(p) + pending(p), that sum is the truth. Who moves what:
--      * the projects trigger (insert, soft delete, restore, owner move, id change, delete)
--        moves p's part (1, base(p)) between owners by appending owner-total delta rows to
--        user_dashboard_stats_delta (append-only: two transactions moving projects of the same
--        owner never wait for each other, so no cross-project deadlock). It first locks base(p)
--        FOR UPDATE (a new project's row is created by the insert), so base(p) cannot change
--        until it commits, and it reads base(p) after that lock;
--      * the fold adds a project's folded deltas to base(p) and, if p is live, to T(owner(p)).
--        It locks base(p) FOR UPDATE SKIP LOCKED first and reads p's owner and state in a later
--        statement (a new snapshot). A project trigger that committed before the lock is in that
--        snapshot; one that has not locked base(p) yet waits for the fold and then moves the
--        new base(p); one that holds base(p) makes the fold skip p (its deltas stay pending for
--        a later fold). So the two never interleave on a project, and the fold waits for no app
--        transaction on a project row;
--      * a reader's snapshot holds, per project, either a fold or a trigger's move entirely or
--        not at all, so the identity above holds at every commit.
--    Lock order: app row (projects), then base(p) (trigger; the fold never waits for it), then
--    user base rows (the fold only, in key order; users trigger and backfill as before).
--    The projects trigger's cost falls on project writes only (rare): one base-row lock and one
--    or two delta rows; votes and comments are unchanged. Projects older than phase1 get base(p)
--    from the backfill's project batches; until the backfill's owner-total batches have run the
--    owner totals are not exact (like every relation before its backfill).

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
    pending_intros_received bigint NOT NULL DEFAULT 0,
    -- the owner totals (section 5): the user's live projects and their FOLDED counts
    projects_count          bigint NOT NULL DEFAULT 0,
    upvotes_received        bigint NOT NULL DEFAULT 0,
    downvotes_received      bigint NOT NULL DEFAULT 0,
    comments_received       bigint NOT NULL DEFAULT 0
) WITH (fillfactor = 50);

-- Append-only; rows are only ever inserted (triggers) and deleted (fold, user deletion).
CREATE TABLE user_dashboard_stats_delta (
    user_id                 bigint NOT NULL,
    votes_cast              bigint NOT NULL DEFAULT 0,
    followers_count         bigint NOT NULL DEFAULT 0,
    following_count         bigint NOT NULL DEFAULT 0,
    unread_messages         bigint NOT NULL DEFAULT 0,
    pending_intros_received bigint NOT NULL DEFAULT 0,
    projects_count          bigint NOT NULL DEFAULT 0,  -- owner totals moved by the projects
    upvotes_received        bigint NOT NULL DEFAULT 0,  -- trigger (section 5)
    downvotes_received      bigint NOT NULL DEFAULT 0,
    comments_received       bigint NOT NULL DEFAULT 0
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
-- The owner columns are base + pending owner deltas + the pending project_stats_delta rows of
-- the user's live projects (section 5). That last part is read from the owner's project list
-- for an owner of at most 200 projects, and from the pending rows (each pending project's owner
-- by a primary-key probe) for more: a user's row costs at most about 200 index probes or the
-- pending rows, which the fold keeps few, whether they own 1 project or 10,000. (Reading only
-- the pending rows made every user pay for them: 2,000 pending rows, mostly uncached projects,
-- cost a typical user 40-67 ms at `large`.) LATERAL: a full scan (verify) runs it per user.
CREATE OR REPLACE VIEW user_dashboard_stats AS
SELECT u.id AS user_id,
       (coalesce(b.projects_count, 0) + coalesce(d.projects_count, 0))::bigint AS projects_count,
       (coalesce(b.upvotes_received, 0) + coalesce(d.upvotes_received, 0)
        + coalesce(pr.upvotes, 0))::bigint AS upvotes_received,
       (coalesce(b.downvotes_received, 0) + coalesce(d.downvotes_received, 0)
        + coalesce(pr.downvotes, 0))::bigint AS downvotes_received,
       (coalesce(b.comments_received, 0) + coalesce(d.comments_received, 0)
        + coalesce(pr.comments, 0))::bigint AS comments_received,
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
           sum(pending_intros_received) AS pending_intros_received,
           sum(projects_count) AS projects_count,
           sum(upvotes_received) AS upvotes_received,
           sum(downvotes_received) AS downvotes_received,
           sum(comments_received) AS comments_received
    FROM user_dashboard_stats_delta
    GROUP BY user_id
) d ON d.user_id = u.id
LEFT JOIN (
    SELECT voter_id, sum(upvotes + downvotes) AS votes_cast
    FROM project_stats_delta
    WHERE voter_id IS NOT NULL
    GROUP BY voter_id
) vd ON vd.voter_id = u.id
LEFT JOIN LATERAL (
    -- One branch runs, chosen per user by their folded projects_count (a gate on values of the
    -- outer row: the other branch is not even started); both give the same sums, the gate only
    -- chooses the cheaper way. 200 projects cost about as many index probes as a few hundred
    -- pending rows, the fold's usual backlog.
    SELECT sum(x.upvotes) AS upvotes, sum(x.downvotes) AS downvotes, sum(x.comments) AS comments
    FROM (
        -- an owner of few projects: their live projects (an index), each one's pending rows by
        -- an index probe (LATERAL: never a scan of all pending rows per user, which made a full
        -- scan cost users x pending rows)
        SELECT pd.upvotes, pd.downvotes, pd.comments
        FROM projects p
        CROSS JOIN LATERAL (
            SELECT sum(d1.upvotes) AS upvotes, sum(d1.downvotes) AS downvotes,
                   sum(d1.comments) AS comments
            FROM project_stats_delta d1
            WHERE d1.project_id = p.id
        ) pd
        WHERE p.owner_id = u.id AND p.deleted_at IS NULL
          AND coalesce(b.projects_count, 0) + coalesce(d.projects_count, 0) <= 200
        UNION ALL
        -- an owner of many: the pending rows per project, each project's owner and state read
        -- by a primary-key probe (a subplan: no plan can start from the owner's projects)
        SELECT pg.upvotes, pg.downvotes, pg.comments
        FROM (
            SELECT project_id, sum(upvotes) AS upvotes, sum(downvotes) AS downvotes,
                   sum(comments) AS comments
            FROM project_stats_delta
            GROUP BY project_id
        ) pg
        WHERE coalesce(b.projects_count, 0) + coalesce(d.projects_count, 0) > 200
          AND (SELECT p.owner_id FROM projects p
               WHERE p.id = pg.project_id AND p.deleted_at IS NULL) = u.id
    ) x
) pr ON true;

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
-- either as deltas or in base. A project's folded counts also go to its owner's totals if it is
-- live (section 5): the fold first locks the projects' base rows FOR UPDATE SKIP LOCKED, then,
-- in a later statement (a new READ COMMITTED snapshot), reads each project's owner and live
-- state. A project whose base row another transaction holds (the projects trigger, moving its
-- counts between owners) keeps its deltas pending until a later fold; so the fold never waits
-- for an app transaction on a project, and no project changes owner or live state between the
-- fold's read and its commit. One fold runs at a time (a second one returns 0 at once).
-- Parts of deleted users and projects are dropped, not folded (their base rows go too). While
-- a backfill holds the exclusive advisory lock the fold does nothing and returns 0.
CREATE OR REPLACE FUNCTION opskit_fold_user_dashboard_deltas(max_rows integer DEFAULT 10000)
RETURNS bigint
LANGUAGE plpgsql
AS $fn$
DECLARE
    v_user_rows tid[];
    v_project_rows tid[];
    v_projects bigint[];
    v_locked bigint[];
    v_busy bigint[];
    v_folded bigint;
BEGIN
    IF NOT pg_try_advisory_xact_lock_shared(1869640555, 11)
       OR NOT pg_try_advisory_xact_lock(1869640555, 13) THEN
        RETURN 0;
    END IF;
    -- 1. Claim delta rows.
    v_user_rows := ARRAY(
        SELECT ctid FROM user_dashboard_stats_delta LIMIT max_rows FOR UPDATE SKIP LOCKED);
    SELECT coalesce(array_agg(c.ctid), '{}'), coalesce(array_agg(DISTINCT c.project_id), '{}')
    INTO v_project_rows, v_projects
    FROM (SELECT ctid, project_id FROM project_stats_delta
          LIMIT greatest(max_rows - cardinality(v_user_rows), 0)
          FOR UPDATE SKIP LOCKED) AS c;
    -- 2. Lock their projects' base rows, key order; those held by someone else are busy.
    v_locked := ARRAY(
        SELECT project_id FROM project_stats_base WHERE project_id = ANY (v_projects)
        ORDER BY project_id FOR UPDATE SKIP LOCKED);
    v_busy := ARRAY(
        SELECT project_id FROM project_stats_base
        WHERE project_id = ANY (v_projects) AND project_id <> ALL (v_locked));
    -- 3. A new snapshot: every change of a locked project's owner or live state committed
    --    before we locked it is visible, and none can commit before we do.
    WITH user_moved AS (
        -- ARRAY(SELECT unnest(..)): a TID scan of the claimed rows whatever their number (with
        -- the array itself the planner saw its size and scanned the whole table)
        DELETE FROM user_dashboard_stats_delta
        WHERE ctid = ANY (ARRAY(SELECT unnest(v_user_rows)))
        RETURNING user_id, votes_cast, followers_count, following_count, unread_messages,
                  pending_intros_received, projects_count, upvotes_received,
                  downvotes_received, comments_received
    ), project_moved AS (
        DELETE FROM project_stats_delta
        WHERE ctid = ANY (ARRAY(SELECT unnest(v_project_rows))) AND project_id <> ALL (v_busy)
        RETURNING project_id, voter_id, upvotes, downvotes, comments
    ), project_agg AS (
        SELECT m.project_id, sum(m.upvotes) AS upvotes, sum(m.downvotes) AS downvotes,
               sum(m.comments) AS comments, p.id IS NOT NULL AS present,
               CASE WHEN p.deleted_at IS NULL THEN p.owner_id END AS live_owner_id
        FROM project_moved m
        LEFT JOIN projects p ON p.id = m.project_id
        GROUP BY m.project_id, p.id
    ), user_agg AS (
        SELECT m.user_id,
               sum(m.votes_cast) AS votes_cast,
               sum(m.followers_count) AS followers_count,
               sum(m.following_count) AS following_count,
               sum(m.unread_messages) AS unread_messages,
               sum(m.pending_intros_received) AS pending_intros_received,
               sum(m.projects_count) AS projects_count,
               sum(m.upvotes_received) AS upvotes_received,
               sum(m.downvotes_received) AS downvotes_received,
               sum(m.comments_received) AS comments_received
        FROM (
            SELECT user_id, votes_cast, followers_count, following_count, unread_messages,
                   pending_intros_received, projects_count, upvotes_received,
                   downvotes_received, comments_received
            FROM user_moved
            UNION ALL
            SELECT voter_id, upvotes + downvotes, 0, 0, 0, 0, 0, 0, 0, 0
            FROM project_moved
            WHERE voter_id IS NOT NULL
            UNION ALL
            SELECT live_owner_id, 0, 0, 0, 0, 0, 0, upvotes, downvotes, comments
            FROM project_agg
            WHERE live_owner_id IS NOT NULL
        ) AS m
        GROUP BY m.user_id
    ), user_applied AS (
        INSERT INTO user_dashboard_stats_base AS b (
            user_id, votes_cast, followers_count, following_count, unread_messages,
            pending_intros_received, projects_count, upvotes_received, downvotes_received,
            comments_received)
        SELECT a.user_id, a.votes_cast, a.followers_count, a.following_count,
               a.unread_messages, a.pending_intros_received, a.projects_count,
               a.upvotes_received, a.downvotes_received, a.comments_received
        FROM user_agg a
        WHERE EXISTS (SELECT 1 FROM users u WHERE u.id = a.user_id)
          -- a vote flipped (or cast and taken back) moves no count: no row version for +0
          AND (a.votes_cast, a.followers_count, a.following_count, a.unread_messages,
               a.pending_intros_received, a.projects_count, a.upvotes_received,
               a.downvotes_received, a.comments_received) <> (0, 0, 0, 0, 0, 0, 0, 0, 0)
        ORDER BY a.user_id
        ON CONFLICT (user_id) DO UPDATE SET
            votes_cast = b.votes_cast + EXCLUDED.votes_cast,
            followers_count = b.followers_count + EXCLUDED.followers_count,
            following_count = b.following_count + EXCLUDED.following_count,
            unread_messages = b.unread_messages + EXCLUDED.unread_messages,
            pending_intros_received = b.pending_intros_received + EXCLUDED.pending_intros_received,
            projects_count = b.projects_count + EXCLUDED.projects_count,
            upvotes_received = b.upvotes_received + EXCLUDED.upvotes_received,
            downvotes_received = b.downvotes_received + EXCLUDED.downvotes_received,
            comments_received = b.comments_received + EXCLUDED.comments_received
        RETURNING 1
    ), project_applied AS (
        -- rows we locked in 2, or missing ones: projects older than phase1 that the backfill
        -- has not reached yet (the projects trigger creates the row of every new project)
        INSERT INTO project_stats_base AS b (project_id, upvotes, downvotes, comments)
        SELECT a.project_id, a.upvotes, a.downvotes, a.comments
        FROM project_agg a
        WHERE a.present
        ORDER BY a.project_id
        ON CONFLICT (project_id) DO UPDATE SET
            upvotes = b.upvotes + EXCLUDED.upvotes,
            downvotes = b.downvotes + EXCLUDED.downvotes,
            comments = b.comments + EXCLUDED.comments
        RETURNING 1
    ), projects_gone AS (
        DELETE FROM project_stats_base b
        USING project_agg a
        WHERE b.project_id = a.project_id AND NOT a.present
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

-- projects, per row (section 5): a project's part of its owner's totals is, while it is live,
-- 1 project plus its FOLDED counts (project_stats_base); its pending deltas are counted at read
-- time. An insert, a soft delete or restore, an owner move or a delete moves that part by
-- appending owner-total delta rows. The project's base row is locked first (and created for a
-- new project), so no fold changes the folded counts until we commit: a fold skips a held row
-- and leaves its deltas pending; a fold holding it makes us wait for its commit, and this new
-- statement then reads what it folded. Under REPEATABLE READ, a base row a fold changed after
-- the transaction's snapshot raises a serialization error here instead of moving stale counts.
CREATE OR REPLACE FUNCTION opskit_trg_projects() RETURNS trigger
LANGUAGE plpgsql
AS $fn$
DECLARE
    v_up bigint := 0;
    v_down bigint := 0;
    v_comments bigint := 0;
BEGIN
    IF TG_OP = 'INSERT' THEN
        -- a new project: no votes or comments folded yet (ids are never reused; a stale row of
        -- a deleted project with this id is reset)
        INSERT INTO project_stats_base AS b (project_id) VALUES (NEW.id)
        ON CONFLICT (project_id) DO UPDATE SET upvotes = 0, downvotes = 0, comments = 0;
        IF NEW.deleted_at IS NULL THEN
            INSERT INTO user_dashboard_stats_delta (user_id, projects_count)
            VALUES (NEW.owner_id, 1);
        END IF;
        RETURN NULL;
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.id = OLD.id AND NEW.owner_id IS NOT DISTINCT FROM OLD.owner_id
       AND (NEW.deleted_at IS NULL) = (OLD.deleted_at IS NULL) THEN
        RETURN NULL;  -- neither owner nor live state changed
    END IF;
    -- OLD's part leaves (and its base row goes with a deleted project or an old id)
    SELECT b.upvotes, b.downvotes, b.comments INTO v_up, v_down, v_comments
    FROM project_stats_base b WHERE b.project_id = OLD.id FOR UPDATE;
    v_up := coalesce(v_up, 0);
    v_down := coalesce(v_down, 0);
    v_comments := coalesce(v_comments, 0);
    IF OLD.deleted_at IS NULL THEN
        INSERT INTO user_dashboard_stats_delta (
            user_id, projects_count, upvotes_received, downvotes_received, comments_received)
        VALUES (OLD.owner_id, -1, -v_up, -v_down, -v_comments);
    END IF;
    IF TG_OP = 'DELETE' OR NEW.id <> OLD.id THEN
        DELETE FROM project_stats_base WHERE project_id = OLD.id;
        IF TG_OP = 'DELETE' THEN
            RETURN NULL;
        END IF;
        -- a new id is a new project: its votes and comments, if any, are pending deltas
        INSERT INTO project_stats_base AS b (project_id) VALUES (NEW.id)
        ON CONFLICT (project_id) DO UPDATE SET upvotes = 0, downvotes = 0, comments = 0;
        v_up := 0;
        v_down := 0;
        v_comments := 0;
    END IF;
    IF NEW.deleted_at IS NULL THEN
        INSERT INTO user_dashboard_stats_delta (
            user_id, projects_count, upvotes_received, downvotes_received, comments_received)
        VALUES (NEW.owner_id, 1, v_up, v_down, v_comments);
    END IF;
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

-- follows, per row: followers_count of the followee, following_count of the follower. The old
-- version (NULL in an insert) counts -1, the new one (NULL in a delete) +1; a user on both
-- sides of an update gets their net change, and an update that moves nothing writes nothing.
CREATE OR REPLACE FUNCTION opskit_trg_follows() RETURNS trigger
LANGUAGE plpgsql
AS $fn$
BEGIN
    INSERT INTO user_dashboard_stats_delta (user_id, followers_count, following_count)
    SELECT c.user_id, sum(c.followers), sum(c.following)
    FROM (VALUES (OLD.followee_id, -1, 0), (OLD.follower_id, 0, -1),
                 (NEW.followee_id, 1, 0), (NEW.follower_id, 0, 1))
         AS c(user_id, followers, following)
    WHERE c.user_id IS NOT NULL
    GROUP BY c.user_id
    HAVING sum(c.followers) <> 0 OR sum(c.following) <> 0;
    RETURN NULL;
END
$fn$;

-- intro_requests, per row: intro_request_stats of requester and target, pending_intros_received
-- of the target; old version -1, new version +1, netted per user as for follows.
CREATE OR REPLACE FUNCTION opskit_trg_intro_requests() RETURNS trigger
LANGUAGE plpgsql
AS $fn$
BEGIN
    INSERT INTO intro_request_stats_delta (
        user_id, sent_total, sent_pending, sent_accepted, sent_declined,
        received_total, received_pending, received_accepted, received_declined)
    SELECT x.user_id, sum(x.st), sum(x.sp), sum(x.sa), sum(x.sd),
           sum(x.rt), sum(x.rp), sum(x.ra), sum(x.rd)
    FROM (
        SELECT c.requester_id AS user_id, c.sign AS st,
               CASE WHEN c.status = 'pending' THEN c.sign ELSE 0 END AS sp,
               CASE WHEN c.status = 'accepted' THEN c.sign ELSE 0 END AS sa,
               CASE WHEN c.status = 'declined' THEN c.sign ELSE 0 END AS sd,
               0 AS rt, 0 AS rp, 0 AS ra, 0 AS rd
        FROM (VALUES (-1, OLD.requester_id, OLD.target_id, OLD.status),
                     (1, NEW.requester_id, NEW.target_id, NEW.status))
             AS c(sign, requester_id, target_id, status)
        WHERE c.requester_id IS NOT NULL
        UNION ALL
        SELECT c.target_id, 0, 0, 0, 0, c.sign,
               CASE WHEN c.status = 'pending' THEN c.sign ELSE 0 END,
               CASE WHEN c.status = 'accepted' THEN c.sign ELSE 0 END,
               CASE WHEN c.status = 'declined' THEN c.sign ELSE 0 END
        FROM (VALUES (-1, OLD.requester_id, OLD.target_id, OLD.status),
                     (1, NEW.requester_id, NEW.target_id, NEW.status))
             AS c(sign, requester_id, target_id, status)
        WHERE c.target_id IS NOT NULL
    ) AS x
    GROUP BY x.user_id
    HAVING sum(x.st) <> 0 OR sum(x.sp) <> 0 OR sum(x.sa) <> 0 OR sum(x.sd) <> 0
        OR sum(x.rt) <> 0 OR sum(x.rp) <> 0 OR sum(x.ra) <> 0 OR sum(x.rd) <> 0;

    INSERT INTO user_dashboard_stats_delta (user_id, pending_intros_received)
    SELECT c.user_id, sum(c.pending)
    FROM (VALUES (OLD.target_id, -(OLD.status = 'pending')::int),
                 (NEW.target_id, (NEW.status = 'pending')::int)) AS c(user_id, pending)
    WHERE c.user_id IS NOT NULL
    GROUP BY c.user_id
    HAVING sum(c.pending) <> 0;
    RETURN NULL;
END
$fn$;

-- messages: one conversation row (section 3). p_old is the message's version before the
-- statement when it belonged to this row's pair, p_new the version after it when it belongs;
-- either may be NULL.
CREATE OR REPLACE FUNCTION opskit_conversation_apply(
    p_user bigint, p_other bigint, p_old messages, p_new messages)
RETURNS void
LANGUAGE plpgsql
AS $fn$
DECLARE
    v_count int := (p_new.id IS NOT NULL)::int - (p_old.id IS NOT NULL)::int;
    -- unread_count of (user, other) counts the unread messages other sent user; a message to
    -- oneself is in the one row of its pair, unread by that user
    v_unread int := (p_new.id IS NOT NULL AND p_new.recipient_id = p_user
                     AND p_new.read_at IS NULL)::int
                  - (p_old.id IS NOT NULL AND p_old.recipient_id = p_user
                     AND p_old.read_at IS NULL)::int;
    -- the change leaves the message's last_message_* fields as they were (a read, mostly)
    v_same_last boolean := coalesce(
        (p_old.id, p_old.created_at, p_old.sender_id, left(p_old.body, 100))
            = (p_new.id, p_new.created_at, p_new.sender_id, left(p_new.body, 100)), false);
BEGIN
    IF v_count = 0 AND v_unread = 0 AND v_same_last THEN
        RETURN;
    END IF;

    IF p_old.id IS NULL THEN
        -- A message joined the pair: one upsert. It waits for an uncommitted row of the pair
        -- (another writer's, or a backfill batch's placeholder), then reads its newest version.
        INSERT INTO message_conversations_denorm AS cv (
            user_id, other_user_id, message_count, unread_count,
            last_message_id, last_message_at, last_message_sender_id, last_message_preview)
        VALUES (p_user, p_other, 1, v_unread,
                p_new.id, p_new.created_at, p_new.sender_id, left(p_new.body, 100))
        ON CONFLICT (user_id, other_user_id) DO UPDATE
        SET message_count = cv.message_count + 1,
            unread_count = cv.unread_count + EXCLUDED.unread_count,
            (last_message_id, last_message_at, last_message_sender_id, last_message_preview) =
                (SELECT l.* FROM (VALUES
                    (cv.last_message_id, cv.last_message_at, cv.last_message_sender_id,
                     cv.last_message_preview),
                    (EXCLUDED.last_message_id, EXCLUDED.last_message_at,
                     EXCLUDED.last_message_sender_id, EXCLUDED.last_message_preview))
                     AS l(id, created_at, sender_id, preview)
                 ORDER BY l.created_at DESC NULLS LAST, l.id DESC LIMIT 1);
        RETURN;
    END IF;

    -- Fast path: the row exists and its last message stays (or this version is newer).
    UPDATE message_conversations_denorm AS cv
    SET message_count = cv.message_count + v_count,
        unread_count = cv.unread_count + v_unread,
        (last_message_id, last_message_at, last_message_sender_id, last_message_preview) =
            (SELECT l.* FROM (VALUES
                (cv.last_message_id, cv.last_message_at, cv.last_message_sender_id,
                 cv.last_message_preview),
                (p_new.id, p_new.created_at, p_new.sender_id, left(p_new.body, 100)))
                 AS l(id, created_at, sender_id, preview)
             WHERE l.id IS NOT NULL
             ORDER BY l.created_at DESC NULLS LAST, l.id DESC LIMIT 1)
    WHERE cv.user_id = p_user AND cv.other_user_id = p_other
      AND (v_same_last OR cv.last_message_id <> p_old.id);
    IF FOUND THEN
        RETURN;
    END IF;

    -- Slow path: the last message left or changed, or the row is missing. Lock the row; an
    -- uncommitted one (a backfill batch's placeholder) is waited for, a missing one becomes a
    -- placeholder (last_message_id NULL); WHERE false locks an existing row without writing.
    INSERT INTO message_conversations_denorm AS cv (user_id, other_user_id)
    VALUES (p_user, p_other)
    ON CONFLICT (user_id, other_user_id) DO UPDATE SET message_count = cv.message_count
    WHERE false;

    -- New snapshot, taken after the lock: every committed change of the pair is in `messages`
    -- and in the row, so the newest message is read again from `messages`.
    UPDATE message_conversations_denorm AS cv
    SET message_count = cv.message_count + v_count,
        unread_count = cv.unread_count + v_unread,
        (last_message_id, last_message_at, last_message_sender_id, last_message_preview) = (
            SELECT l.id, l.created_at, l.sender_id, left(l.body, 100)
            FROM (
                (SELECT m.id, m.created_at, m.sender_id, m.body FROM messages m
                 WHERE m.sender_id = p_user AND m.recipient_id = p_other
                 ORDER BY m.created_at DESC, m.id DESC LIMIT 1)
                UNION ALL
                (SELECT m.id, m.created_at, m.sender_id, m.body FROM messages m
                 WHERE m.sender_id = p_other AND m.recipient_id = p_user
                 ORDER BY m.created_at DESC, m.id DESC LIMIT 1)
            ) AS l
            ORDER BY l.created_at DESC, l.id DESC
            LIMIT 1)
    WHERE cv.user_id = p_user AND cv.other_user_id = p_other
      AND cv.last_message_id IS NOT NULL;

    -- A placeholder of ours (the pair was not counted: its rows come from the backfill, or its
    -- messages all left in this statement) and a row left without messages go.
    DELETE FROM message_conversations_denorm AS cv
    WHERE cv.user_id = p_user AND cv.other_user_id = p_other
      AND (cv.message_count <= 0 OR cv.last_message_id IS NULL);
END
$fn$;

-- messages, per row: unread_messages of the recipient, the conversation rows of the message's
-- pair (section 3) in key order, and the pair for `opskit reconcile --changed` (no delta records
-- a change that moves no unread count). No WHEN clause, for the reason given at the votes
-- trigger: the no-op check is the function's.
CREATE OR REPLACE FUNCTION opskit_trg_messages() RETURNS trigger
LANGUAGE plpgsql
AS $fn$
DECLARE
    v_lo bigint;
    v_hi bigint;
    v_key record;
BEGIN
    IF TG_OP = 'UPDATE' AND
       (NEW.id, NEW.sender_id, NEW.recipient_id, NEW.created_at, NEW.read_at IS NULL,
        left(NEW.body, 100))
       IS NOT DISTINCT FROM
       (OLD.id, OLD.sender_id, OLD.recipient_id, OLD.created_at, OLD.read_at IS NULL,
        left(OLD.body, 100)) THEN
        RETURN NULL;
    END IF;

    -- unread_messages: an update that keeps the message unread by the same user moves nothing
    IF TG_OP <> 'INSERT' AND OLD.read_at IS NULL AND NOT (TG_OP = 'UPDATE'
       AND NEW.read_at IS NULL AND NEW.recipient_id = OLD.recipient_id) THEN
        INSERT INTO user_dashboard_stats_delta (user_id, unread_messages)
        VALUES (OLD.recipient_id, -1);
    END IF;
    IF TG_OP <> 'DELETE' AND NEW.read_at IS NULL AND NOT (TG_OP = 'UPDATE'
       AND OLD.read_at IS NULL AND NEW.recipient_id = OLD.recipient_id) THEN
        INSERT INTO user_dashboard_stats_delta (user_id, unread_messages)
        VALUES (NEW.recipient_id, 1);
    END IF;

    IF TG_OP = 'UPDATE' AND (least(NEW.sender_id, NEW.recipient_id),
                             greatest(NEW.sender_id, NEW.recipient_id))
                         <> (least(OLD.sender_id, OLD.recipient_id),
                             greatest(OLD.sender_id, OLD.recipient_id)) THEN
        -- moved to another pair (never by the app): up to four rows, in key order
        FOR v_key IN
            SELECT DISTINCT k.user_id, k.other_user_id
            FROM (VALUES (OLD.sender_id, OLD.recipient_id), (OLD.recipient_id, OLD.sender_id),
                         (NEW.sender_id, NEW.recipient_id), (NEW.recipient_id, NEW.sender_id))
                 AS k(user_id, other_user_id)
            ORDER BY k.user_id, k.other_user_id
        LOOP
            PERFORM opskit_conversation_apply(
                v_key.user_id, v_key.other_user_id,
                CASE WHEN (v_key.user_id, v_key.other_user_id) IN
                          ((OLD.sender_id, OLD.recipient_id), (OLD.recipient_id, OLD.sender_id))
                     THEN OLD END,
                CASE WHEN (v_key.user_id, v_key.other_user_id) IN
                          ((NEW.sender_id, NEW.recipient_id), (NEW.recipient_id, NEW.sender_id))
                     THEN NEW END);
        END LOOP;
    ELSE
        -- OLD is NULL in an insert, NEW in a delete
        v_lo := least(coalesce(NEW.sender_id, OLD.sender_id),
                      coalesce(NEW.recipient_id, OLD.recipient_id));
        v_hi := greatest(coalesce(NEW.sender_id, OLD.sender_id),
                         coalesce(NEW.recipient_id, OLD.recipient_id));
        PERFORM opskit_conversation_apply(v_lo, v_hi, OLD, NEW);
        IF v_lo <> v_hi THEN
            PERFORM opskit_conversation_apply(v_hi, v_lo, OLD, NEW);
        END IF;
    END IF;

    -- The pairs, after their locks: no two writers insert the same pair at once.
    INSERT INTO opskit_reconcile_keys (entity, entity_id, other_id)
    SELECT DISTINCT 'conversation', least(k.a, k.b) AS lo, greatest(k.a, k.b) AS hi
    FROM (VALUES (OLD.sender_id, OLD.recipient_id), (NEW.sender_id, NEW.recipient_id))
         AS k(a, b)
    WHERE k.a IS NOT NULL
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
LOCK TABLE users, projects, votes, comments, follows, messages, intro_requests
    IN SHARE ROW EXCLUSIVE MODE;

CREATE CONSTRAINT TRIGGER trg_opskit_users_del AFTER DELETE ON users
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION opskit_trg_users_gone();
CREATE CONSTRAINT TRIGGER trg_opskit_users_upd AFTER UPDATE OF id ON users
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id)
    EXECUTE FUNCTION opskit_trg_users_gone();

CREATE TRIGGER trg_opskit_projects_ins AFTER INSERT ON projects
    FOR EACH ROW EXECUTE FUNCTION opskit_trg_projects();
CREATE TRIGGER trg_opskit_projects_upd AFTER UPDATE OF id, owner_id, deleted_at ON projects
    FOR EACH ROW EXECUTE FUNCTION opskit_trg_projects();
CREATE TRIGGER trg_opskit_projects_del AFTER DELETE ON projects
    FOR EACH ROW EXECUTE FUNCTION opskit_trg_projects();

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
    FOR EACH ROW EXECUTE FUNCTION opskit_trg_follows();
CREATE TRIGGER trg_opskit_follows_upd AFTER UPDATE OF follower_id, followee_id ON follows
    FOR EACH ROW EXECUTE FUNCTION opskit_trg_follows();
CREATE TRIGGER trg_opskit_follows_del AFTER DELETE ON follows
    FOR EACH ROW EXECUTE FUNCTION opskit_trg_follows();

CREATE TRIGGER trg_opskit_messages_ins AFTER INSERT ON messages
    FOR EACH ROW EXECUTE FUNCTION opskit_trg_messages();
CREATE TRIGGER trg_opskit_messages_upd AFTER UPDATE ON messages
    FOR EACH ROW EXECUTE FUNCTION opskit_trg_messages();
CREATE TRIGGER trg_opskit_messages_del AFTER DELETE ON messages
    FOR EACH ROW EXECUTE FUNCTION opskit_trg_messages();

CREATE TRIGGER trg_opskit_intro_requests_ins AFTER INSERT ON intro_requests
    FOR EACH ROW EXECUTE FUNCTION opskit_trg_intro_requests();
CREATE TRIGGER trg_opskit_intro_requests_upd AFTER UPDATE OF requester_id, target_id, status ON intro_requests
    FOR EACH ROW EXECUTE FUNCTION opskit_trg_intro_requests();
CREATE TRIGGER trg_opskit_intro_requests_del AFTER DELETE ON intro_requests
    FOR EACH ROW EXECUTE FUNCTION opskit_trg_intro_requests();
