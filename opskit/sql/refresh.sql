-- The refresh queue's worker side (`opskit refresh`, the daemon). Blocks are loaded by
-- opskit.sql.queries(). The writer side is the enqueue trigger of phase2_materialized_views.

-- name: known_views --
SELECT DISTINCT view_name FROM mv_dependencies ORDER BY view_name;

-- name: due_views --
-- A view is due when no request came for the debounce window, or its oldest pending request is
-- older than the max wait (so a constant stream of writes cannot keep it stale forever).
SELECT view_name
FROM mv_refresh_queue
WHERE status = 'pending'
GROUP BY view_name
HAVING max(refresh_requested_at) < now() - make_interval(secs => %(debounce_s)s)
    OR min(refresh_requested_at) < now() - make_interval(secs => %(max_wait_s)s)
ORDER BY min(refresh_requested_at);

-- name: claim --
UPDATE mv_refresh_queue
SET status = 'claimed', claimed_at = clock_timestamp(), claimed_by = %(worker)s
WHERE id IN (
    SELECT id FROM mv_refresh_queue
    WHERE view_name = %(view)s AND status = 'pending'
    FOR UPDATE SKIP LOCKED
)
RETURNING id;

-- name: snapshot_xmax --
SELECT pg_snapshot_xmax(pg_current_snapshot())::text;

-- name: older_transactions_running --
-- True while a transaction that was running when the claim committed has not ended.
SELECT pg_snapshot_xmin(pg_current_snapshot()) < %(xmax)s::xid8;

-- name: log_start --
INSERT INTO mv_refresh_log (view_name, refresh_started_at, status, worker_id)
VALUES (%(view)s, clock_timestamp(), 'running', %(worker)s)
RETURNING id;

-- name: log_finish --
UPDATE mv_refresh_log
SET refresh_finished_at = clock_timestamp(),
    duration_ms = round(extract(epoch FROM clock_timestamp() - refresh_started_at) * 1000),
    status = %(status)s, error = %(error)s, requests_done = %(requests)s
WHERE id = %(log_id)s
RETURNING duration_ms;

-- name: mark_done --
UPDATE mv_refresh_queue
SET status = 'done', finished_at = clock_timestamp(), last_refresh_duration_ms = %(duration_ms)s
WHERE id = ANY (%(ids)s);

-- name: release_claims --
UPDATE mv_refresh_queue SET status = 'pending', claimed_at = NULL, claimed_by = NULL
WHERE id = ANY (%(ids)s);

-- name: forget_old_done --
-- Done requests are kept an hour for the monitoring queries, then dropped: the queue stays small.
DELETE FROM mv_refresh_queue WHERE status = 'done' AND finished_at < now() - interval '1 hour';

-- name: try_lock --
SELECT pg_try_advisory_lock(%(space)s, %(key)s);

-- name: unlock --
SELECT pg_advisory_unlock(%(space)s, %(key)s);
