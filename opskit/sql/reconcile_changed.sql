-- `opskit reconcile --changed` (opskit/engine/changed.py): the touched keys of
-- opskit_reconcile_keys (phase1_denormalized_tables), and each relation's truth for given keys
-- only. Blocks are loaded by opskit.sql.queries(). The truth_* blocks return exactly the columns
-- of their relation (docs/interface.md §6, as opskit/sql/truth.sql does for every row) and are
-- embedded as subqueries: no trailing comment after a query, no percent sign but parameters.

-- name: lock --
-- One check at a time (session lock): two runs never check the same keys.
SELECT pg_advisory_lock(1869640548, 21);  -- 0x6F707364 "opsd", 21: reconcile --changed

-- name: unlock --
SELECT pg_advisory_unlock(1869640548, 21);

-- name: claim_keys --
-- Every touched key, marked claimed (rows a dead check left claimed are taken again). Rows a
-- writer is touching right now are skipped: they will be there for the next check. Locks in key
-- order, the order of every writer.
UPDATE opskit_reconcile_keys SET claimed = true
WHERE ctid = ANY (ARRAY(
    SELECT ctid FROM opskit_reconcile_keys
    ORDER BY entity, kind, entity_id, other_id
    FOR UPDATE SKIP LOCKED))
RETURNING entity, kind, entity_id, other_id;

-- name: keep_keys --
-- Keys found drifted stay (unclaimed, so forget_claimed_keys leaves them) for the next check.
INSERT INTO opskit_reconcile_keys AS r (entity, kind, entity_id, other_id)
SELECT DISTINCT k.entity, k.kind, k.entity_id, k.other_id
FROM unnest(%(entities)s::text[], %(kinds)s::text[], %(ids)s::bigint[], %(others)s::bigint[])
     AS k (entity, kind, entity_id, other_id)
ORDER BY 1, 2, 3, 4
ON CONFLICT (entity, kind, entity_id, other_id) DO UPDATE SET claimed = false;

-- name: forget_claimed_keys --
-- The claimed keys are checked: drop them, unless a writer touched one again meanwhile (it is
-- unclaimed then, or being touched now: skipped).
DELETE FROM opskit_reconcile_keys
WHERE ctid = ANY (ARRAY(
    SELECT ctid FROM opskit_reconcile_keys
    WHERE claimed
    ORDER BY entity, kind, entity_id, other_id
    FOR UPDATE SKIP LOCKED));

-- name: relation_project_stats --
-- The per-project counts (phase 1's project_stats view: base + pending deltas), one project
-- at a time.
SELECT s.*
FROM unnest(%(project_ids)s::bigint[]) AS k (id)
CROSS JOIN LATERAL (SELECT * FROM project_stats WHERE project_id = k.id OFFSET 0) AS s

-- name: truth_project_stats --
SELECT p.id AS project_id, v.upvotes, v.downvotes, c.comments
FROM projects p
CROSS JOIN LATERAL (
    SELECT count(*) FILTER (WHERE v.vote_type = 'up') AS upvotes,
           count(*) FILTER (WHERE v.vote_type = 'down') AS downvotes
    FROM votes v
    WHERE v.project_id = p.id
) AS v
CROSS JOIN LATERAL (SELECT count(*) AS comments FROM comments c WHERE c.project_id = p.id) AS c
WHERE p.id = ANY (%(project_ids)s::bigint[])

-- name: relation_user_dashboard_stats --
-- One user at a time, so the key reaches every subquery of the view (a few index probes each;
-- OFFSET 0 keeps the planner from flattening it into a join over every user).
SELECT s.*
FROM unnest(%(user_ids)s::bigint[]) AS k (id)
CROSS JOIN LATERAL (SELECT * FROM user_dashboard_stats WHERE user_id = k.id OFFSET 0) AS s

-- name: truth_user_dashboard_stats --
SELECT u.id AS user_id,
       o.projects_count,
       o.upvotes_received,
       o.downvotes_received,
       o.comments_received,
       (SELECT count(*) FROM votes v WHERE v.user_id = u.id) AS votes_cast,
       (SELECT count(*) FROM follows f WHERE f.followee_id = u.id) AS followers_count,
       (SELECT count(*) FROM follows f WHERE f.follower_id = u.id) AS following_count,
       (SELECT count(*) FROM messages m
        WHERE m.recipient_id = u.id AND m.read_at IS NULL) AS unread_messages,
       (SELECT count(*) FROM intro_requests i
        WHERE i.target_id = u.id AND i.status = 'pending') AS pending_intros_received
FROM users u
CROSS JOIN LATERAL (
    SELECT count(*) AS projects_count,
           coalesce(sum(pv.up), 0)::bigint AS upvotes_received,
           coalesce(sum(pv.down), 0)::bigint AS downvotes_received,
           coalesce(sum(pc.n), 0)::bigint AS comments_received
    FROM projects p
    CROSS JOIN LATERAL (
        SELECT count(*) FILTER (WHERE v.vote_type = 'up') AS up,
               count(*) FILTER (WHERE v.vote_type = 'down') AS down
        FROM votes v
        WHERE v.project_id = p.id
    ) AS pv
    CROSS JOIN LATERAL (SELECT count(*) AS n FROM comments c WHERE c.project_id = p.id) AS pc
    WHERE p.owner_id = u.id AND p.deleted_at IS NULL
) AS o
WHERE u.id = ANY (%(user_ids)s::bigint[])

-- name: relation_intro_request_stats --
SELECT s.*
FROM unnest(%(user_ids)s::bigint[]) AS k (id)
CROSS JOIN LATERAL (SELECT * FROM intro_request_stats WHERE user_id = k.id OFFSET 0) AS s

-- name: truth_intro_request_stats --
SELECT u.id AS user_id,
       s.sent_total, s.sent_pending, s.sent_accepted, s.sent_declined,
       r.received_total, r.received_pending, r.received_accepted, r.received_declined
FROM users u
CROSS JOIN LATERAL (
    SELECT count(*) AS sent_total,
           count(*) FILTER (WHERE i.status = 'pending') AS sent_pending,
           count(*) FILTER (WHERE i.status = 'accepted') AS sent_accepted,
           count(*) FILTER (WHERE i.status = 'declined') AS sent_declined
    FROM intro_requests i
    WHERE i.requester_id = u.id
) AS s
CROSS JOIN LATERAL (
    SELECT count(*) AS received_total,
           count(*) FILTER (WHERE i.status = 'pending') AS received_pending,
           count(*) FILTER (WHERE i.status = 'accepted') AS received_accepted,
           count(*) FILTER (WHERE i.status = 'declined') AS received_declined
    FROM intro_requests i
    WHERE i.target_id = u.id
) AS r
WHERE u.id = ANY (%(user_ids)s::bigint[])

-- name: relation_message_conversations_denorm --
-- Both rows of every touched pair (lo, hi): primary key lookups.
SELECT c.*
FROM (SELECT DISTINCT p.lo, p.hi
      FROM unnest(%(los)s::bigint[], %(his)s::bigint[]) AS p (lo, hi)) AS p
CROSS JOIN LATERAL (
    SELECT * FROM message_conversations_denorm c
    WHERE c.user_id = p.lo AND c.other_user_id = p.hi
    UNION ALL
    SELECT * FROM message_conversations_denorm c
    WHERE c.user_id = p.hi AND c.other_user_id = p.lo AND p.lo <> p.hi
) AS c

-- name: truth_message_conversations --
-- Per touched pair (lo <= hi): its counts and newest message, emitted for both users (once for
-- a user's messages to themselves); a pair without messages has no row. Each direction is one
-- range of phase 4's (sender_id, recipient_id, created_at DESC, id DESC) index.
WITH pairs AS (
    SELECT DISTINCT p.lo, p.hi FROM unnest(%(los)s::bigint[], %(his)s::bigint[]) AS p (lo, hi)
), per_pair AS (
    SELECT p.lo, p.hi, a.message_count, a.unread_by_lo, a.unread_by_hi,
           l.id, l.created_at, l.sender_id, l.preview
    FROM pairs p
    CROSS JOIN LATERAL (
        SELECT count(*) AS message_count,
               count(*) FILTER (WHERE m.read_at IS NULL AND m.recipient_id = p.lo)
                   AS unread_by_lo,
               count(*) FILTER (WHERE m.read_at IS NULL AND m.recipient_id = p.hi
                                  AND p.lo <> p.hi) AS unread_by_hi
        FROM (SELECT m.recipient_id, m.read_at FROM messages m
              WHERE m.sender_id = p.lo AND m.recipient_id = p.hi
              UNION ALL
              SELECT m.recipient_id, m.read_at FROM messages m
              WHERE m.sender_id = p.hi AND m.recipient_id = p.lo AND p.lo <> p.hi) AS m
    ) AS a
    CROSS JOIN LATERAL (
        SELECT n.id, n.created_at, n.sender_id, left(n.body, 100) AS preview
        FROM ((SELECT m.id, m.created_at, m.sender_id, m.body FROM messages m
               WHERE m.sender_id = p.lo AND m.recipient_id = p.hi
               ORDER BY m.created_at DESC, m.id DESC
               LIMIT 1)
              UNION ALL
              (SELECT m.id, m.created_at, m.sender_id, m.body FROM messages m
               WHERE m.sender_id = p.hi AND m.recipient_id = p.lo AND p.lo <> p.hi
               ORDER BY m.created_at DESC, m.id DESC
               LIMIT 1)) AS n
        ORDER BY n.created_at DESC, n.id DESC
        LIMIT 1
    ) AS l
)
SELECT lo AS user_id, hi AS other_user_id, message_count, unread_by_lo AS unread_count,
       id AS last_message_id, created_at AS last_message_at, sender_id AS last_message_sender_id,
       preview AS last_message_preview
FROM per_pair
UNION ALL
SELECT hi, lo, message_count, unread_by_hi, id, created_at, sender_id, preview
FROM per_pair
WHERE lo <> hi

-- name: keyed_diff --
-- A relation's truth and rows for the same keys (truth_* and relation_* blocks): the number of
-- rows compared and the keys of the rows that differ or exist on one side only.
WITH truth AS ({truth}), relation AS ({relation})
SELECT count(*),
       coalesce(array_agg(key_text ORDER BY key_text) FILTER (WHERE differs), ARRAY[]::text[])
FROM (
    SELECT ROW({truth_columns}) IS DISTINCT FROM ROW({relation_columns}) AS differs,
           concat_ws(',', {keys}) AS key_text
    FROM truth t FULL JOIN relation r ON {join}
) AS d;

-- name: view_keys_diff --
-- A maintained view's rows of the given keys against its definition for those keys; the keys
-- whose rows differ (as refresh.sql's definition_diff names them).
WITH relation AS (SELECT {columns} FROM {view} WHERE {match}),
     definition AS (SELECT {columns} FROM {definition}(%(kinds)s::text[], %(keys)s::bigint[])),
     differing AS (
         (SELECT * FROM relation EXCEPT ALL SELECT * FROM definition)
         UNION ALL
         (SELECT * FROM definition EXCEPT ALL SELECT * FROM relation)
     )
SELECT ARRAY(SELECT DISTINCT concat_ws(':', {key}) FROM differing ORDER BY 1);

-- name: queue_view_keys --
-- Drifted view keys, as pending changes of that view only (the daemon's repair path).
INSERT INTO mv_pending_changes (view_name, entity, entity_id, changed_at)
SELECT %(view)s, e.entity, e.id, clock_timestamp()
FROM unnest(%(entities)s::text[], %(ids)s::bigint[]) AS e (entity, id);

-- name: changed_last_hour --
-- `opskit status`: the newest --changed run, and the share of the rows checked in the last
-- hour's --changed runs that were consistent.
SELECT (SELECT max(finished_at) FROM opskit_reconcile_runs WHERE mode = 'changed')
           AS last_run_at,
       (SELECT keys_checked FROM opskit_reconcile_runs WHERE mode = 'changed'
        ORDER BY finished_at DESC LIMIT 1) AS last_keys_checked,
       count(*) AS runs_last_hour,
       coalesce(sum(keys_checked), 0)::bigint AS keys_checked_last_hour,
       coalesce(sum(rows_checked), 0)::bigint AS rows_checked_last_hour,
       coalesce(sum(drift_total), 0)::bigint AS drift_last_hour,
       round(1 - sum(drift_total)::numeric / nullif(sum(rows_checked), 0), 6)::float8
           AS consistent_share_last_hour
FROM opskit_reconcile_runs
WHERE mode = 'changed' AND finished_at > now() - interval '1 hour';

-- name: runs_have_mode --
SELECT EXISTS (SELECT FROM pg_attribute
               WHERE attrelid = to_regclass('opskit_reconcile_runs') AND attname = 'mode'
                 AND NOT attisdropped);
