-- `opskit bench`: how stale the after mode's materialized views were while it served the load.
-- A refresh request waits in mv_refresh_queue from the write that enqueued it until the refresh
-- that claimed it finished; writes that found a younger pending request were covered by it.

-- name: staleness --
SELECT extract(epoch FROM finished_at - refresh_requested_at)::float8 AS staleness_s
FROM mv_refresh_queue
WHERE status = 'done'
  AND refresh_requested_at >= to_timestamp(%(since)s)
  AND refresh_requested_at < to_timestamp(%(until)s);

-- name: pending_since --
SELECT count(*) FROM mv_refresh_queue
WHERE status <> 'done' AND refresh_requested_at >= to_timestamp(%(since)s);

-- name: refreshes_since --
SELECT count(*) FROM mv_refresh_log
WHERE status = 'completed' AND refresh_started_at >= to_timestamp(%(since)s);
