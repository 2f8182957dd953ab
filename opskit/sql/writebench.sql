-- Queries of `opskit bench-writes`. Blocks are loaded by opskit.sql.queries().

-- name: upsert_vote --
-- A vote cast or flipped, as the app's POST /api/votes does it.
INSERT INTO votes (user_id, project_id, vote_type) VALUES (%s, %s, %s)
ON CONFLICT (user_id, project_id) DO UPDATE SET vote_type = EXCLUDED.vote_type
WHERE votes.vote_type IS DISTINCT FROM EXCLUDED.vote_type;

-- name: delete_vote --
DELETE FROM votes WHERE user_id = %s AND project_id = %s;

-- name: max_user_id --
SELECT max(id) FROM users;

-- name: hottest_project --
SELECT project_id FROM votes v JOIN projects p ON p.id = v.project_id
WHERE p.deleted_at IS NULL
GROUP BY project_id ORDER BY count(*) DESC, project_id LIMIT 1;

-- name: live_projects --
SELECT id FROM projects WHERE deleted_at IS NULL ORDER BY id;

-- name: wal_lsn --
SELECT pg_current_wal_lsn();

-- name: wal_bytes_since --
SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s::pg_lsn);
