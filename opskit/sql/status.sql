-- Counts shown by `opskit status`. Blocks are loaded by opskit.sql.queries().

-- name: opskit_trigger_count --
SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal AND tgname LIKE 'trg_opskit_%';

-- name: refresh_queue_pending --
SELECT count(*) FROM mv_refresh_queue WHERE status = 'pending';

-- name: refresh_runs_last_hour --
SELECT status, count(*) FROM mv_refresh_log
WHERE refresh_started_at > now() - interval '1 hour'
GROUP BY status ORDER BY status;
