-- `opskit reconcile`: its run log and the freshness check of the views. Blocks are loaded by
-- opskit.sql.queries(). The tables are opskit's own (like opskit_migrations), created on first
-- use, not by a phase: phase0_cleanup and rollback leave them alone.

-- name: create_tables --
-- One implicit transaction; the lock keeps two runs starting at once from racing the DDL.
SELECT pg_advisory_xact_lock(1869640548, 2);  -- 0x6F707364 "opsd": opskit DDL
CREATE TABLE IF NOT EXISTS opskit_reconcile_runs (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    started_at       timestamptz NOT NULL,
    finished_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    fix              boolean NOT NULL,
    drift_total      bigint NOT NULL,
    rows_checked     bigint NOT NULL,
    truth_rows_per_s bigint,
    duration_ms      integer NOT NULL,
    worker_id        text NOT NULL,
    checks           jsonb NOT NULL
);
-- `opskit reconcile --changed` runs: mode 'changed', the touched keys they took.
ALTER TABLE opskit_reconcile_runs ADD COLUMN IF NOT EXISTS mode text NOT NULL DEFAULT 'full';
ALTER TABLE opskit_reconcile_runs ADD COLUMN IF NOT EXISTS keys_checked bigint;

-- name: record_run --
INSERT INTO opskit_reconcile_runs
    (started_at, fix, drift_total, rows_checked, truth_rows_per_s, duration_ms, worker_id, checks,
     mode, keys_checked)
VALUES (%(started_at)s, %(fix)s, %(drift_total)s, %(rows_checked)s, %(truth_rows_per_s)s,
        %(duration_ms)s, %(worker_id)s, %(checks)s, %(mode)s, %(keys_checked)s)
RETURNING id;

-- name: overdue_views --
-- Views with a change older than the freshness promise still to apply (mv_refresh_queue has a
-- row per view, requested at its oldest pending change).
SELECT view_name
FROM mv_refresh_queue
WHERE status = 'pending'
GROUP BY view_name
HAVING min(refresh_requested_at) < now() - make_interval(secs => %(overdue_after_s)s)
ORDER BY view_name;

-- name: project_ids_of_owners --
-- The projects whose per-project counts feed the drifted users' dashboard rows.
SELECT id FROM projects WHERE owner_id = ANY (%(user_ids)s);

-- name: user_ids_only --
SELECT unnest(%(user_ids)s::bigint[]);
