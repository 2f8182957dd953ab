-- The truth of the denormalized relations (CONTRACT §6), computed from the app tables only.
-- Each block returns exactly the columns of its relation, so set differences in either
-- direction show drift. Blocks are embedded as subqueries: no trailing comment after a query,
-- and no percent sign anywhere (queries run with parameters).

-- name: truth_user_dashboard_stats --
SELECT u.id AS user_id,
       coalesce(p.projects_count, 0)::bigint AS projects_count,
       coalesce(pv.upvotes_received, 0)::bigint AS upvotes_received,
       coalesce(pv.downvotes_received, 0)::bigint AS downvotes_received,
       coalesce(pc.comments_received, 0)::bigint AS comments_received,
       coalesce(vc.votes_cast, 0)::bigint AS votes_cast,
       coalesce(fr.followers_count, 0)::bigint AS followers_count,
       coalesce(fg.following_count, 0)::bigint AS following_count,
       coalesce(um.unread_messages, 0)::bigint AS unread_messages,
       coalesce(pi.pending_intros_received, 0)::bigint AS pending_intros_received
FROM users u
LEFT JOIN (
    SELECT owner_id, count(*) AS projects_count
    FROM projects
    WHERE deleted_at IS NULL
    GROUP BY owner_id
) p ON p.owner_id = u.id
LEFT JOIN (
    SELECT pr.owner_id,
           count(*) FILTER (WHERE v.vote_type = 'up') AS upvotes_received,
           count(*) FILTER (WHERE v.vote_type = 'down') AS downvotes_received
    FROM votes v
    JOIN projects pr ON pr.id = v.project_id
    WHERE pr.deleted_at IS NULL
    GROUP BY pr.owner_id
) pv ON pv.owner_id = u.id
LEFT JOIN (
    SELECT pr.owner_id, count(*) AS comments_received
    FROM comments c
    JOIN projects pr ON pr.id = c.project_id
    WHERE pr.deleted_at IS NULL
    GROUP BY pr.owner_id
) pc ON pc.owner_id = u.id
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
-- Aggregate per direction first (sender, recipient), then fold both directions: the newest
-- message per direction comes from an index-ordered scan without bodies, and only the winning
-- message's body is fetched (sorting every message with its body spilled ~400 MB on medium).
WITH directed AS (
    SELECT sender_id, recipient_id,
           count(*) AS sent,
           count(*) FILTER (WHERE read_at IS NULL) AS unread
    FROM messages
    GROUP BY sender_id, recipient_id
), newest_directed AS (
    SELECT DISTINCT ON (sender_id, recipient_id) sender_id, recipient_id, id, created_at
    FROM messages
    ORDER BY sender_id, recipient_id, created_at DESC, id DESC
), counts AS (
    SELECT user_id, other_user_id, sum(sent) AS message_count, sum(unread) AS unread_count
    FROM (
        SELECT sender_id AS user_id, recipient_id AS other_user_id, sent, 0 AS unread
        FROM directed
        UNION ALL
        SELECT recipient_id, sender_id, sent, unread FROM directed
    ) both_ways
    GROUP BY user_id, other_user_id
), newest AS (
    SELECT DISTINCT ON (user_id, other_user_id) user_id, other_user_id, id, created_at
    FROM (
        SELECT sender_id AS user_id, recipient_id AS other_user_id, id, created_at
        FROM newest_directed
        UNION ALL
        SELECT recipient_id, sender_id, id, created_at FROM newest_directed
    ) both_ways
    ORDER BY user_id, other_user_id, created_at DESC, id DESC
)
SELECT c.user_id,
       c.other_user_id,
       c.message_count::bigint AS message_count,
       c.unread_count::bigint AS unread_count,
       n.id AS last_message_id,
       n.created_at AS last_message_at,
       m.sender_id AS last_message_sender_id,
       left(m.body, 100) AS last_message_preview
FROM counts c
JOIN newest n USING (user_id, other_user_id)
JOIN messages m ON m.id = n.id;

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
