-- Queries of `opskit bench-writes`. Blocks are loaded by opskit.sql.queries().

-- name: max_user_id --
SELECT max(id) FROM users;

-- name: hottest_project --
SELECT project_id FROM votes v JOIN projects p ON p.id = v.project_id
WHERE p.deleted_at IS NULL
GROUP BY project_id ORDER BY count(*) DESC, project_id LIMIT 1;

-- name: max_project_id --
SELECT max(id) FROM projects;

-- Each run starts right after a checkpoint (writebench._checkpoint).
-- name: checkpoint --
CHECKPOINT;

-- name: wal_lsn --
SELECT pg_current_wal_lsn();

-- name: wal_bytes_since --
SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s::pg_lsn);

-- The vote writes of `bench-writes --breakdown` (the same mix as the pgbench script).
-- name: vote_delete --
DELETE FROM votes WHERE user_id = %s AND project_id = %s;

-- name: vote_upsert --
INSERT INTO votes (user_id, project_id, vote_type) VALUES (%s, %s, %s)
ON CONFLICT (user_id, project_id) DO UPDATE SET vote_type = EXCLUDED.vote_type
WHERE votes.vote_type IS DISTINCT FROM EXCLUDED.vote_type;

-- The other write paths of the API (docs/interface.md §5), for tools/write_instructions.sh.
-- name: message_send --
INSERT INTO messages (sender_id, recipient_id, body) VALUES (%s, %s, %s);

-- name: message_read --
UPDATE messages SET read_at = now()
WHERE recipient_id = %s AND sender_id = %s AND read_at IS NULL;

-- name: intro_request --
INSERT INTO intro_requests (id, requester_id, target_id, message) VALUES (%s, %s, %s, %s);

-- name: intro_respond --
UPDATE intro_requests SET status = %s, responded_at = now()
WHERE id = %s AND status = 'pending';

-- name: conversation_pairs --
SELECT DISTINCT sender_id, recipient_id FROM messages WHERE sender_id <> recipient_id
ORDER BY sender_id, recipient_id LIMIT %s;

-- name: max_intro_id --
SELECT coalesce(max(id), 0) FROM intro_requests;

-- Rows the phases wrote so far (evidence that a disabled trigger wrote nothing).
-- name: log_rows --
SELECT count(*) FROM mv_change_log;

-- name: delta_rows --
SELECT count(*) FROM project_stats_delta;

-- name: vote_triggers_on --
SELECT tgname FROM pg_trigger
WHERE tgrelid = 'votes'::regclass AND tgname LIKE 'trg_opskit%%' AND tgenabled <> 'D'
ORDER BY tgname;
