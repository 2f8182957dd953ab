-- Queries of `opskit bench-writes`. Blocks are loaded by opskit.sql.queries().

-- name: max_user_id --
SELECT max(id) FROM users;

-- name: hottest_project --
SELECT project_id FROM votes v JOIN projects p ON p.id = v.project_id
WHERE p.deleted_at IS NULL
GROUP BY project_id ORDER BY count(*) DESC, project_id LIMIT 1;

-- name: max_project_id --
SELECT max(id) FROM projects;

-- name: wal_lsn --
SELECT pg_current_wal_lsn();

-- name: wal_bytes_since --
SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s::pg_lsn);
