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
-- The daemon holds a view's lock (refresh.LOCK_SPACE_VIEW): it is applying a batch.
SELECT EXISTS (
    SELECT FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.locktype = 'advisory' AND l.classid = %(space)s AND l.granted
      AND a.application_name = %(application_name)s
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
-- Changes no view has applied yet: in the log, or pending for a view.
SELECT (SELECT count(*) FROM mv_change_log) + (SELECT count(*) FROM mv_pending_changes);

-- name: staleness --
-- Each applied batch's staleness: from its oldest change (the oldest write it made visible) to
-- its end. Changes older than the soak (a backlog it found) are not the soak's.
SELECT view_name, extract(epoch FROM refresh_finished_at - oldest_change_at)::float8
FROM mv_refresh_log
WHERE status = 'completed' AND oldest_change_at >= %(since)s;

-- name: refresh_runs --
SELECT id, view_name, status, worker_id, refresh_started_at, refresh_finished_at
FROM mv_refresh_log
WHERE refresh_started_at >= %(since)s
ORDER BY id;
