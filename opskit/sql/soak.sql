-- `opskit soak`: the fault injections and the figures of its table. Blocks are loaded by
-- opskit.sql.queries().

-- name: now --
SELECT clock_timestamp();

-- name: live_daemons --
-- Daemons whose heartbeat is recent (opskit_daemon_heartbeats exists once a daemon started).
SELECT worker_id
FROM opskit_daemon_heartbeats
WHERE stopped_at IS NULL AND last_seen_at > now() - make_interval(secs => %(live_after_s)s);

-- name: heartbeats_exist --
SELECT to_regclass('opskit_daemon_heartbeats') IS NOT NULL;

-- name: has_beaten --
SELECT EXISTS (SELECT FROM opskit_daemon_heartbeats WHERE worker_id = %(worker)s);

-- name: holds_claim --
-- The daemon has claimed refresh requests: it is inside a refresh.
SELECT EXISTS (
    SELECT FROM mv_refresh_queue WHERE status = 'claimed' AND claimed_by = %(worker)s
);

-- name: writers_in_transaction --
SELECT pid
FROM pg_stat_activity
WHERE datname = current_database() AND application_name = %(application_name)s
  AND xact_start IS NOT NULL AND pid <> pg_backend_pid();

-- name: terminate --
SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM unnest(%(pids)s::int[]) AS pid;

-- name: trigger_enabled --
SELECT tgenabled <> 'D' FROM pg_trigger
WHERE tgrelid = to_regclass(%(table)s) AND tgname = %(trigger)s;

-- name: lock_timeout --
SET lock_timeout = '5s';

-- name: outage_probe_message --
-- A write while the trigger is off: a message between two existing users (lowest ids).
INSERT INTO messages (sender_id, recipient_id, body)
SELECT min(id), max(id), 'opskit soak: written while a trigger was disabled'
FROM (SELECT id FROM users ORDER BY id LIMIT 2) AS two
HAVING count(*) = 2;

-- name: queue_left --
SELECT count(*) FROM mv_refresh_queue WHERE status <> 'done';

-- name: staleness --
-- Each refresh run's staleness: from its oldest request made during the soak (the oldest write
-- it made visible) to the end of the refresh; a run's requests share finished_at (refresh.sql
-- mark_done). Requests older than the soak (a backlog it found) are not the soak's.
SELECT extract(epoch FROM finished_at - min(refresh_requested_at))::float8
FROM mv_refresh_queue
WHERE status = 'done' AND refresh_requested_at >= %(since)s
GROUP BY view_name, finished_at;

-- name: refresh_runs --
SELECT id, view_name, status, worker_id, refresh_started_at, refresh_finished_at
FROM mv_refresh_log
WHERE refresh_started_at >= %(since)s
ORDER BY id;
