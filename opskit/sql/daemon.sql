-- The daemon's bookkeeping (`opskit scheduler`). Blocks are loaded by opskit.sql.queries().
-- The tables are opskit's own (like opskit_migrations), created on the daemon's start, not by a
-- phase: phase0_cleanup and rollback leave them alone.

-- name: create_tables --
-- One implicit transaction; the lock keeps two daemons starting at once from racing the DDL.
SELECT pg_advisory_xact_lock(1869640548, 1);  -- 0x6F707364 "opsd": opskit DDL
CREATE TABLE IF NOT EXISTS opskit_daemon_heartbeats (
    worker_id      text PRIMARY KEY,
    hostname       text NOT NULL,
    pid            integer NOT NULL,
    started_at     timestamptz NOT NULL,
    last_seen_at   timestamptz NOT NULL,
    stopped_at     timestamptz,
    opskit_version text NOT NULL
);
-- A scheduled job runs once per slot across every daemon: the first to insert its row runs it.
CREATE TABLE IF NOT EXISTS opskit_job_runs (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job           text NOT NULL,
    scheduled_for timestamptz NOT NULL,
    worker_id     text NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at   timestamptz,
    status        text NOT NULL DEFAULT 'running'
                  CHECK (status IN ('running', 'completed', 'failed')),
    detail        text,
    UNIQUE (job, scheduled_for)
);

-- name: heartbeat --
INSERT INTO opskit_daemon_heartbeats
    (worker_id, hostname, pid, started_at, last_seen_at, opskit_version)
VALUES (%(worker)s, %(hostname)s, %(pid)s, %(started_at)s, now(), %(version)s)
ON CONFLICT (worker_id) DO UPDATE SET last_seen_at = now(), stopped_at = NULL;

-- name: heartbeat_stopped --
UPDATE opskit_daemon_heartbeats SET stopped_at = now(), last_seen_at = now()
WHERE worker_id = %(worker)s;

-- name: forget_old_heartbeats --
DELETE FROM opskit_daemon_heartbeats WHERE last_seen_at < now() - interval '7 days';

-- name: claim_job_slot --
INSERT INTO opskit_job_runs (job, scheduled_for, worker_id)
VALUES (%(job)s, %(scheduled_for)s, %(worker)s)
ON CONFLICT (job, scheduled_for) DO NOTHING
RETURNING id;

-- name: finish_job_run --
UPDATE opskit_job_runs SET finished_at = clock_timestamp(), status = %(status)s, detail = %(detail)s
WHERE id = %(id)s;

-- name: cancel_own_queries --
-- Shutdown: cancel the running statements of this daemon's other sessions (a refresh that would
-- outlast the grace period fails, and its failure path puts its claims back to pending).
SELECT count(pg_cancel_backend(pid))
FROM pg_stat_activity
WHERE application_name = %(application_name)s AND pid <> pg_backend_pid() AND state = 'active';
