-- The migration runner's own bookkeeping. Blocks are loaded by opskit.sql.queries().

-- name: create_ledger --
CREATE TABLE IF NOT EXISTS opskit_migrations (
    name           text PRIMARY KEY,
    checksum       text NOT NULL,
    applied_at     timestamptz NOT NULL,
    duration_ms    bigint NOT NULL,
    applied_by     text NOT NULL,
    opskit_version text NOT NULL
);
-- Progress of phases that cannot run in one transaction: a crashed run resumes after the last
-- statement recorded here (for the same file checksum).
CREATE TABLE IF NOT EXISTS opskit_migration_steps (
    phase        text NOT NULL,
    checksum     text NOT NULL,
    statement_no int NOT NULL,
    completed_at timestamptz NOT NULL,
    PRIMARY KEY (phase, statement_no)
);
-- Roles given `migrate --grant-to`: every later migrate grants them opskit's relations again, so
-- a rollback and migrate (which drop and recreate the relations) keep the app role working.
CREATE TABLE IF NOT EXISTS opskit_migration_grants (
    role       text PRIMARY KEY,
    granted_at timestamptz NOT NULL,
    granted_by text NOT NULL
);

-- How the locked section of each phase's script (up: the phase, down: its rollback) went the
-- last time it ran. Kept across rollbacks (unlike the ledger rows), so `migrate --dry-run` can
-- tell how long a pending phase held its locks the last time it was applied.
CREATE TABLE IF NOT EXISTS opskit_migration_locks (
    phase       text NOT NULL,
    script      text NOT NULL CHECK (script IN ('up', 'down')),
    tables      text[] NOT NULL,
    lock_mode   text NOT NULL,
    waited_ms   bigint NOT NULL,
    held_ms     bigint NOT NULL,
    attempts    int NOT NULL,
    finished_at timestamptz NOT NULL,
    PRIMARY KEY (phase, script)
);

-- name: ledger_exists --
SELECT to_regclass('opskit_migrations') IS NOT NULL;

-- name: applied_phases --
SELECT name, checksum, applied_at, duration_ms, applied_by, opskit_version
FROM opskit_migrations;

-- name: record_applied --
INSERT INTO opskit_migrations (name, checksum, applied_at, duration_ms, applied_by, opskit_version)
VALUES (%(name)s, %(checksum)s, clock_timestamp(), %(duration_ms)s, %(applied_by)s, %(version)s);

-- name: forget_applied --
DELETE FROM opskit_migrations WHERE name = %(name)s;

-- name: record_lock_run --
INSERT INTO opskit_migration_locks AS l
    (phase, script, tables, lock_mode, waited_ms, held_ms, attempts, finished_at)
VALUES (%(phase)s, %(script)s, %(tables)s, %(mode)s, %(waited_ms)s, %(held_ms)s, %(attempts)s,
        clock_timestamp())
ON CONFLICT (phase, script) DO UPDATE
SET tables = EXCLUDED.tables, lock_mode = EXCLUDED.lock_mode, waited_ms = EXCLUDED.waited_ms,
    held_ms = EXCLUDED.held_ms, attempts = EXCLUDED.attempts, finished_at = EXCLUDED.finished_at;

-- name: lock_runs --
-- Empty when the table does not exist yet (a database opskit never migrated).
SELECT phase, waited_ms, held_ms, attempts, finished_at
FROM opskit_migration_locks
WHERE script = %(script)s;

-- name: lock_runs_exist --
SELECT to_regclass('opskit_migration_locks') IS NOT NULL;

-- name: lock_limits --
-- The transaction's lock_timeout (as set for the phase) and the server's deadlock_timeout, in ms.
SELECT (SELECT setting::bigint FROM pg_settings WHERE name = 'lock_timeout'),
       (SELECT setting::bigint FROM pg_settings WHERE name = 'deadlock_timeout');

-- name: completed_steps --
SELECT statement_no FROM opskit_migration_steps WHERE phase = %(phase)s AND checksum = %(checksum)s;

-- name: record_step --
INSERT INTO opskit_migration_steps (phase, checksum, statement_no, completed_at)
VALUES (%(phase)s, %(checksum)s, %(statement_no)s, clock_timestamp())
ON CONFLICT (phase, statement_no) DO UPDATE
SET checksum = EXCLUDED.checksum, completed_at = EXCLUDED.completed_at;

-- name: clear_steps --
DELETE FROM opskit_migration_steps WHERE phase = %(phase)s;

-- name: try_lock --
SELECT pg_try_advisory_lock(%(space)s, %(key)s);

-- name: unlock --
SELECT pg_advisory_unlock(%(space)s, %(key)s);

-- name: lock_holder --
SELECT l.pid
FROM pg_locks l
WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %(space)s AND l.objid = %(key)s
  AND l.objsubid = 2
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database());

-- name: raise_build_settings --
-- For the migration's session: index builds with up to 4 parallel workers and the memory they
-- need (32 MB each), never lowering what the server already allows.
SELECT set_config('maintenance_work_mem', '256MB', false)
WHERE pg_size_bytes(current_setting('maintenance_work_mem')) < pg_size_bytes('256MB');
SELECT set_config('max_parallel_maintenance_workers', '4', false)
WHERE current_setting('max_parallel_maintenance_workers')::integer < 4;

-- name: invalid_index --
-- An index left INVALID by a failed or killed CREATE INDEX CONCURRENTLY.
SELECT NOT i.indisvalid
FROM pg_index i
WHERE i.indexrelid = to_regclass(%(name)s);

-- name: index_build_progress --
SELECT blocks_done, blocks_total, tuples_done, tuples_total, phase
FROM pg_stat_progress_create_index
WHERE pid = %(pid)s;

-- name: missing_roles --
SELECT name FROM unnest(%(roles)s::text[]) AS name
WHERE NOT EXISTS (SELECT FROM pg_roles r WHERE r.rolname = name);

-- name: record_grantee --
INSERT INTO opskit_migration_grants (role, granted_at, granted_by)
VALUES (%(role)s, clock_timestamp(), %(granted_by)s)
ON CONFLICT (role) DO NOTHING;

-- name: grants_table_exists --
SELECT to_regclass('opskit_migration_grants') IS NOT NULL;

-- name: grantees --
-- Recorded roles that still exist, and those dropped since (their grants went with them).
SELECT g.role, r.rolname IS NOT NULL AS role_exists
FROM opskit_migration_grants g
LEFT JOIN pg_roles r ON r.rolname = g.role
ORDER BY g.role;

-- name: existing_relations --
-- Which of the given relations exist, with their kind (r table, v view, m materialized view).
SELECT c.relname, c.relkind
FROM pg_class c
WHERE c.oid IN (SELECT to_regclass(name) FROM unnest(%(names)s::text[]) AS name);

-- name: owned_sequences --
-- Sequences owned by the given tables: identity columns and OWNED BY (mv_refresh_generation).
SELECT s.relname
FROM pg_depend d
JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
  AND d.deptype IN ('a', 'i')
  AND d.refobjid IN (SELECT to_regclass(name) FROM unnest(%(tables)s::text[]) AS name)
ORDER BY s.relname;

-- name: missing_privileges --
-- Which of the (relation, privilege) pairs the role does not hold.
SELECT w.name, w.privilege
FROM unnest(%(names)s::text[], %(privileges)s::text[], %(is_sequence)s::bool[])
     AS w(name, privilege, is_sequence)
WHERE NOT CASE WHEN w.is_sequence THEN has_sequence_privilege(%(role)s, w.name, w.privilege)
               ELSE has_table_privilege(%(role)s, w.name, w.privilege) END
ORDER BY w.name, w.privilege;
