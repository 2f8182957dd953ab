-- The truth of the denormalized relations (docs/interface.md §6), computed from the app tables
-- only.
-- Each truth_* block returns exactly the columns of its relation, so set differences in either
-- direction show drift. Each source_rows_* block is an aggregate over the truth's rows `t` in
-- the diff (a full outer join: relation-only rows have null t columns): how many app rows that
-- truth counted, for reconcile's source rows per second.
-- Blocks are embedded as subqueries: no trailing comment after a query, and no percent sign
-- anywhere (queries run with parameters).

-- name: truth_user_dashboard_stats --
-- Votes and comments are counted per project first, then summed over each owner's live
-- projects: 20k groups instead of hashing 2M votes by owner. Every aggregate groups by the
-- leading column of an index (votes_project_id_idx, votes_pkey, the follows keys, ...), so
-- with hash aggregation off (truth.py) they stream from index-only scans and merge-join with
-- users; only the 20k projects get hashed.
SELECT u.id AS user_id,
       coalesce(o.projects_count, 0)::bigint AS projects_count,
       coalesce(o.upvotes_received, 0)::bigint AS upvotes_received,
       coalesce(o.downvotes_received, 0)::bigint AS downvotes_received,
       coalesce(o.comments_received, 0)::bigint AS comments_received,
       coalesce(vc.votes_cast, 0)::bigint AS votes_cast,
       coalesce(fr.followers_count, 0)::bigint AS followers_count,
       coalesce(fg.following_count, 0)::bigint AS following_count,
       coalesce(um.unread_messages, 0)::bigint AS unread_messages,
       coalesce(pi.pending_intros_received, 0)::bigint AS pending_intros_received
FROM users u
LEFT JOIN (
    SELECT p.owner_id,
           count(*) AS projects_count,
           sum(pv.upvotes) AS upvotes_received,
           sum(pv.downvotes) AS downvotes_received,
           sum(pc.comments) AS comments_received
    FROM projects p
    LEFT JOIN (
        SELECT project_id,
               count(*) FILTER (WHERE vote_type = 'up') AS upvotes,
               count(*) FILTER (WHERE vote_type = 'down') AS downvotes
        FROM votes
        GROUP BY project_id
    ) pv ON pv.project_id = p.id
    LEFT JOIN (
        SELECT project_id, count(*) AS comments FROM comments GROUP BY project_id
    ) pc ON pc.project_id = p.id
    WHERE p.deleted_at IS NULL
    GROUP BY p.owner_id
) o ON o.owner_id = u.id
LEFT JOIN (
    SELECT user_id, count(*) AS votes_cast FROM votes GROUP BY user_id
) vc ON vc.user_id = u.id
LEFT JOIN (
    SELECT followee_id, count(*) AS followers_count FROM follows GROUP BY followee_id
) fr ON fr.followee_id = u.id
LEFT JOIN (
    SELECT follower_id, count(*) AS following_count FROM follows GROUP BY follower_id
) fg ON fg.follower_id = u.id
LEFT JOIN (
    SELECT recipient_id, count(*) AS unread_messages
    FROM messages
    WHERE read_at IS NULL
    GROUP BY recipient_id
) um ON um.recipient_id = u.id
LEFT JOIN (
    SELECT target_id, count(*) AS pending_intros_received
    FROM intro_requests
    WHERE status = 'pending'
    GROUP BY target_id
) pi ON pi.target_id = u.id;

-- name: truth_message_conversations --
-- Both users of a pair see the same message_count and newest message, so everything is
-- computed once per unordered pair (lo <= hi) and emitted twice, once for a user's messages to
-- themselves (lo = hi: one row, all of its unread messages are unread by that user). Two scans of messages and no per-row index lookups: the first aggregates per
-- pair (count, unread per direction, newest created_at), the second joins each pair's messages
-- at its newest instant, which brings the body along; ties on created_at go to the highest id.
-- `>=` means `=` there (nothing is newer than the newest) but keeps created_at out of the hash
-- key: hashing the pair alone saves about a tenth of the CPU over 1M messages.
WITH pairs AS (
    SELECT least(sender_id, recipient_id) AS lo,
           greatest(sender_id, recipient_id) AS hi,
           count(*) AS message_count,
           count(*) FILTER (WHERE read_at IS NULL AND recipient_id <= sender_id) AS unread_by_lo,
           count(*) FILTER (WHERE read_at IS NULL AND recipient_id > sender_id) AS unread_by_hi,
           max(created_at) AS last_message_at
    FROM messages
    GROUP BY 1, 2
), newest AS (
    SELECT DISTINCT ON (p.lo, p.hi)
           p.lo, p.hi, p.message_count, p.unread_by_lo, p.unread_by_hi,
           m.id, m.created_at, m.sender_id, left(m.body, 100) AS preview
    FROM pairs p
    JOIN messages m
      ON least(m.sender_id, m.recipient_id) = p.lo
     AND greatest(m.sender_id, m.recipient_id) = p.hi
     AND m.created_at >= p.last_message_at
    ORDER BY p.lo, p.hi, m.id DESC
)
SELECT lo AS user_id,
       hi AS other_user_id,
       message_count,
       unread_by_lo AS unread_count,
       id AS last_message_id,
       created_at AS last_message_at,
       sender_id AS last_message_sender_id,
       preview AS last_message_preview
FROM newest
UNION ALL
SELECT hi, lo, message_count, unread_by_hi, id, created_at, sender_id, preview
FROM newest
WHERE lo <> hi;

-- name: truth_intro_request_stats --
SELECT u.id AS user_id,
       coalesce(s.sent_total, 0)::bigint AS sent_total,
       coalesce(s.sent_pending, 0)::bigint AS sent_pending,
       coalesce(s.sent_accepted, 0)::bigint AS sent_accepted,
       coalesce(s.sent_declined, 0)::bigint AS sent_declined,
       coalesce(r.received_total, 0)::bigint AS received_total,
       coalesce(r.received_pending, 0)::bigint AS received_pending,
       coalesce(r.received_accepted, 0)::bigint AS received_accepted,
       coalesce(r.received_declined, 0)::bigint AS received_declined
FROM users u
LEFT JOIN (
    SELECT requester_id,
           count(*) AS sent_total,
           count(*) FILTER (WHERE status = 'pending') AS sent_pending,
           count(*) FILTER (WHERE status = 'accepted') AS sent_accepted,
           count(*) FILTER (WHERE status = 'declined') AS sent_declined
    FROM intro_requests
    GROUP BY requester_id
) s ON s.requester_id = u.id
LEFT JOIN (
    SELECT target_id,
           count(*) AS received_total,
           count(*) FILTER (WHERE status = 'pending') AS received_pending,
           count(*) FILTER (WHERE status = 'accepted') AS received_accepted,
           count(*) FILTER (WHERE status = 'declined') AS received_declined
    FROM intro_requests
    GROUP BY target_id
) r ON r.target_id = u.id;

-- name: source_rows_user_dashboard_stats --
-- users, their live projects, votes (each counted once, though the truth reads them twice:
-- per project and per voter), comments on live projects, follows (once), unread messages,
-- pending intros. Comments on deleted projects are read too but not counted.
count(t.user_id) + sum(t.projects_count + t.votes_cast + t.comments_received + t.followers_count
               + t.unread_messages + t.pending_intros_received)

-- name: source_rows_message_conversations --
-- every message, once: each pair's count appears in both of its rows (one row for oneself)
coalesce(sum(t.message_count) FILTER (WHERE t.user_id <= t.other_user_id), 0)

-- name: source_rows_intro_request_stats --
-- users and every intro request (once, as sent)
count(t.user_id) + sum(t.sent_total)
