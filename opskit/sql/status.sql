-- Counts shown by `opskit status`. Blocks are loaded by opskit.sql.queries().

-- name: opskit_trigger_count --
SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal AND tgname LIKE 'trg_opskit_%';

-- name: refresh_queue_pending --
-- Changes no view has applied yet: in the log (the daemon routes it every poll) or pending.
SELECT (SELECT count(*) FROM mv_change_log) + (SELECT count(*) FROM mv_pending_changes);

-- name: pending_by_view --
-- Each view's changes still to apply and the time of the oldest (progress while catching up).
SELECT view_name, pending_changes, refresh_requested_at AS oldest_pending_at
FROM mv_refresh_queue
WHERE status = 'pending'
ORDER BY view_name;

-- name: trending_scored_at --
-- The instant of the trending scores mv_feed_projects stored (the same in every row), and its age.
SELECT scored_at, extract(epoch FROM now() - scored_at)::float8 AS age_s
FROM mv_feed_projects
LIMIT 1;

-- name: refresh_runs_last_hour --
SELECT status, count(*) FROM mv_refresh_log
WHERE refresh_started_at > now() - interval '1 hour'
GROUP BY status ORDER BY status;

-- name: refresh_staleness_last_hour --
-- Staleness of each batch (or full build) that ended in the last hour: from the oldest change it
-- made visible to its end (refresh.sql log_batch).
SELECT view_name,
       count(*) AS batches,
       round((percentile_cont(0.5) WITHIN GROUP (ORDER BY staleness_s))::numeric, 3) AS p50_s,
       round((percentile_cont(0.95) WITHIN GROUP (ORDER BY staleness_s))::numeric, 3) AS p95_s,
       round(max(staleness_s)::numeric, 3) AS max_s
FROM (
    SELECT view_name, extract(epoch FROM refresh_finished_at - oldest_change_at) AS staleness_s
    FROM mv_refresh_log
    WHERE status = 'completed' AND oldest_change_at IS NOT NULL
      AND refresh_finished_at > now() - interval '1 hour'
) AS batches
GROUP BY view_name
ORDER BY view_name;

-- name: live_daemons --
SELECT worker_id, started_at, last_seen_at
FROM opskit_daemon_heartbeats
WHERE stopped_at IS NULL AND last_seen_at > now() - make_interval(secs => %(live_after_s)s)
ORDER BY started_at;

-- name: latest_job_runs --
SELECT DISTINCT ON (job) job, scheduled_for, status, worker_id, started_at, finished_at, detail
FROM opskit_job_runs
ORDER BY job, scheduled_for DESC;
