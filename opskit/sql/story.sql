-- `opskit bench`: how stale the after mode's views were while it served the load. Each applied
-- batch logs the time of the oldest change it made visible (refresh.sql log_batch).

-- name: staleness --
SELECT view_name, extract(epoch FROM refresh_finished_at - oldest_change_at)::float8 AS staleness_s
FROM mv_refresh_log
WHERE status = 'completed'
  AND oldest_change_at >= to_timestamp(%(since)s)
  AND oldest_change_at < to_timestamp(%(until)s);

-- name: pending_since --
-- Changes not applied yet: in the log, or pending for a view.
SELECT (SELECT count(*) FROM mv_change_log WHERE changed_at >= to_timestamp(%(since)s))
     + (SELECT count(*) FROM mv_pending_changes WHERE changed_at >= to_timestamp(%(since)s));

-- name: refreshes_since --
SELECT count(*) FROM mv_refresh_log
WHERE status = 'completed' AND refresh_started_at >= to_timestamp(%(since)s);
