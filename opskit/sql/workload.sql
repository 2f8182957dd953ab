-- The app's write paths (docs/interface.md §5) as single statements: opskit.workload runs them
-- from many connections at once, for `opskit soak` and tests/integration/test_phase1_exactness.py.
-- Parameters (opskit.workload.op_params): a, b users; p, p2 projects; hot the hot project;
-- t vote type; k a small number; body text; answer an intro answer; name a fresh username;
-- last_base_user / last_base_project the newest ids the workload may not hard-delete.
-- Blocks are loaded by opskit.sql.queries().

-- name: vote --
INSERT INTO votes (user_id, project_id, vote_type) VALUES (%(a)s, %(p)s, %(t)s)
ON CONFLICT (user_id, project_id) DO UPDATE SET vote_type = EXCLUDED.vote_type;

-- name: vote_hot --
INSERT INTO votes (user_id, project_id, vote_type) VALUES (%(a)s, %(hot)s, %(t)s)
ON CONFLICT (user_id, project_id) DO UPDATE SET vote_type = EXCLUDED.vote_type;

-- name: vote_hot_new --
INSERT INTO votes (user_id, project_id, vote_type) VALUES (%(a)s, %(hot)s, %(t)s)
ON CONFLICT DO NOTHING;

-- name: unvote --
DELETE FROM votes WHERE user_id = %(a)s AND project_id = %(p)s;

-- name: unvote_hot --
DELETE FROM votes WHERE user_id = %(a)s AND project_id = %(hot)s;

-- name: flip --
UPDATE votes SET vote_type = CASE vote_type WHEN 'up' THEN 'down' ELSE 'up' END
WHERE user_id = %(a)s AND project_id = %(p)s;

-- name: flip_all --
UPDATE votes SET vote_type = CASE vote_type WHEN 'up' THEN 'down' ELSE 'up' END
WHERE project_id = %(p)s;

-- name: move_vote --
UPDATE votes SET project_id = %(p2)s WHERE user_id = %(a)s AND project_id = %(p)s;

-- name: give_vote --
UPDATE votes SET user_id = %(b)s WHERE user_id = %(a)s AND project_id = %(p)s;

-- name: comment --
INSERT INTO comments (project_id, user_id, body) VALUES (%(p)s, %(a)s, 'hello');

-- name: uncomment --
DELETE FROM comments WHERE id = (SELECT max(id) FROM comments WHERE project_id = %(p)s);

-- name: move_comment --
UPDATE comments SET project_id = %(p2)s
WHERE id = (SELECT min(id) FROM comments WHERE project_id = %(p)s);

-- name: edit_comments --
UPDATE comments SET body = body || '!' WHERE project_id = %(p)s;

-- name: soft_delete --
UPDATE projects SET deleted_at = now() WHERE id = %(p)s AND deleted_at IS NULL;

-- name: restore --
UPDATE projects SET deleted_at = NULL WHERE id = %(p)s;

-- name: move_project --
UPDATE projects SET owner_id = %(a)s, updated_at = now() WHERE id = %(p)s;

-- name: touch_project --
UPDATE projects SET updated_at = now(), title = title WHERE id = %(p)s;

-- name: new_project --
INSERT INTO projects (owner_id, title) VALUES (%(a)s, 'extra');

-- name: drop_project --
DELETE FROM projects
WHERE id = (SELECT max(id) FROM projects WHERE id > %(last_base_project)s);

-- name: follow --
INSERT INTO follows (follower_id, followee_id) VALUES (%(a)s, %(b)s) ON CONFLICT DO NOTHING;

-- name: unfollow --
DELETE FROM follows WHERE follower_id = %(a)s AND followee_id = %(b)s;

-- name: follow_self --
INSERT INTO follows (follower_id, followee_id) VALUES (%(a)s, %(a)s) ON CONFLICT DO NOTHING;

-- name: message_self --
-- A note to oneself: one conversation row whose user is its other user.
INSERT INTO messages (sender_id, recipient_id, body, created_at)
VALUES (%(a)s, %(a)s, %(body)s, timestamptz '2024-01-01' + make_interval(secs => %(k)s));

-- name: read_self --
UPDATE messages SET read_at = now()
WHERE recipient_id = %(a)s AND sender_id = %(a)s AND read_at IS NULL;

-- name: message --
INSERT INTO messages (sender_id, recipient_id, body, created_at)
VALUES (%(a)s, %(b)s, %(body)s, timestamptz '2024-01-01' + make_interval(secs => %(k)s));

-- name: read --
UPDATE messages SET read_at = now()
WHERE recipient_id = %(a)s AND sender_id = %(b)s AND read_at IS NULL;

-- name: unread --
UPDATE messages SET read_at = NULL
WHERE id = (SELECT max(id) FROM messages WHERE recipient_id = %(a)s AND sender_id = %(b)s);

-- name: edit_last --
UPDATE messages SET body = %(body)s
WHERE id = (SELECT id FROM messages
            WHERE (sender_id = %(a)s AND recipient_id = %(b)s)
               OR (sender_id = %(b)s AND recipient_id = %(a)s)
            ORDER BY created_at DESC, id DESC LIMIT 1);

-- name: delete_newest --
DELETE FROM messages
WHERE id = (SELECT id FROM messages
            WHERE (sender_id = %(a)s AND recipient_id = %(b)s)
               OR (sender_id = %(b)s AND recipient_id = %(a)s)
            ORDER BY created_at DESC, id DESC LIMIT 1);

-- name: delete_oldest --
DELETE FROM messages
WHERE id = (SELECT min(id) FROM messages
            WHERE (sender_id = %(a)s AND recipient_id = %(b)s)
               OR (sender_id = %(b)s AND recipient_id = %(a)s));

-- name: intro --
INSERT INTO intro_requests (requester_id, target_id, project_id) VALUES (%(a)s, %(b)s, %(p)s);

-- name: answer --
UPDATE intro_requests SET status = %(answer)s, responded_at = now()
WHERE id = (SELECT min(id) FROM intro_requests WHERE target_id = %(b)s AND status = 'pending');

-- name: reopen --
UPDATE intro_requests SET status = 'pending', responded_at = NULL
WHERE id = (SELECT max(id) FROM intro_requests WHERE target_id = %(b)s);

-- name: retarget --
UPDATE intro_requests SET target_id = %(b)s
WHERE id = (SELECT max(id) FROM intro_requests WHERE requester_id = %(a)s);

-- name: withdraw --
DELETE FROM intro_requests
WHERE id = (SELECT max(id) FROM intro_requests WHERE requester_id = %(a)s);

-- name: new_user --
-- A user who votes, follows, messages, asks for an intro, comments and owns a project at once.
WITH u AS (INSERT INTO users (username, display_name, email)
           VALUES (%(name)s, %(name)s, %(name)s || '@example.com') RETURNING id),
     v AS (INSERT INTO votes (user_id, project_id, vote_type) SELECT id, %(hot)s, 'up' FROM u),
     f AS (INSERT INTO follows (follower_id, followee_id) SELECT id, %(a)s FROM u),
     g AS (INSERT INTO follows (follower_id, followee_id) SELECT %(b)s, id FROM u),
     m AS (INSERT INTO messages (sender_id, recipient_id, body) SELECT id, %(a)s, 'hi' FROM u),
     n AS (INSERT INTO messages (sender_id, recipient_id, body) SELECT %(b)s, id, 'yo' FROM u),
     i AS (INSERT INTO intro_requests (requester_id, target_id) SELECT id, %(a)s FROM u),
     c AS (INSERT INTO comments (project_id, user_id, body) SELECT %(p)s, id, 'x' FROM u)
INSERT INTO projects (owner_id, title) SELECT id, 'ephemeral' FROM u;

-- name: delete_user --
DELETE FROM users WHERE id = (SELECT max(id) FROM users WHERE id > %(last_base_user)s);

-- The folds, each in its own transaction as the daemon runs them: both record the users they
-- fold for `opskit reconcile --changed`, each in key order, so one transaction running both
-- would insert two runs out of order and could deadlock with the daemon's routing.
-- name: fold_dashboard --
SELECT opskit_fold_user_dashboard_deltas(%(k)s);

-- name: fold_intros --
SELECT opskit_fold_intro_request_deltas(%(k)s);
