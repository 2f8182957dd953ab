"""The migration runner on real PostgreSQL, with small phase files written per test."""

import threading
import time
import uuid

import psycopg
import pytest
from psycopg import sql
from typer.testing import CliRunner

from opskit.cli import app
from opskit.core import schema
from opskit.core.errors import BadInput, DatabaseError, EnvironmentProblem, ExitCode, ProblemFound
from opskit.engine import migrations

PHASE0 = """SET lock_timeout = '5s';
SET statement_timeout = '1min';
DROP TABLE IF EXISTS opskit_note;
"""
PHASE1 = """SET lock_timeout = '5s';
SET statement_timeout = '1min';
CREATE TABLE opskit_note (user_id bigint PRIMARY KEY, note text NOT NULL);
INSERT INTO opskit_note SELECT id, 'hello ' || username FROM users;
"""
PHASE1_DOWN = "DROP TABLE IF EXISTS opskit_note;\n"
PHASE4 = """-- opskit: no-transaction
SET lock_timeout = '5s';
SET statement_timeout = '5min';
-- serves: votes by type
CREATE INDEX CONCURRENTLY IF NOT EXISTS votes_type_idx ON votes (vote_type);
-- serves: one vote per user and project, again
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS votes_project_user_uidx ON votes (project_id, user_id);
"""
PHASE4_DOWN = """DROP INDEX IF EXISTS votes_type_idx;
DROP INDEX IF EXISTS votes_project_user_uidx;
"""


@pytest.fixture
def phase_dir(tmp_path):
    directory = tmp_path / "migrations"
    directory.mkdir()
    files = {
        "phase0_cleanup.sql": PHASE0,
        "phase1_denormalized_tables.sql": PHASE1,
        "phase1_denormalized_tables.down.sql": PHASE1_DOWN,
        "phase4_critical_indexes.sql": PHASE4,
        "phase4_critical_indexes.down.sql": PHASE4_DOWN,
    }
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


def _ledger(url):
    with psycopg.connect(url) as conn:
        return migrations.read_ledger(conn)


def test_migrate_applies_in_order_records_and_then_is_a_no_op(tiny_db_url, phase_dir):
    result = migrations.migrate(tiny_db_url, directory=phase_dir)
    assert [p["name"] for p in result.applied] == [
        "phase0_cleanup",
        "phase1_denormalized_tables",
        "phase4_critical_indexes",
    ]
    ledger = _ledger(tiny_db_url)
    assert set(ledger) == {p["name"] for p in result.applied}
    row = ledger["phase1_denormalized_tables"]
    assert row.checksum == migrations.load_phases(phase_dir)[1].checksum
    assert row.duration_ms >= 0 and "@" in row.applied_by and row.opskit_version
    with psycopg.connect(tiny_db_url) as conn:
        assert conn.execute("SELECT count(*) FROM opskit_note").fetchone()[0] == 200
        valid = conn.execute(
            "SELECT bool_and(indisvalid) FROM pg_index WHERE indexrelid::regclass::text "
            "IN ('votes_type_idx', 'votes_project_user_uidx')"
        ).fetchone()[0]
    assert valid is True

    again = migrations.migrate(tiny_db_url, directory=phase_dir)
    assert again.applied == [] and len(again.already_applied) == 3


def test_to_stops_after_that_phase_and_refuses_going_back(tiny_db_url, phase_dir):
    result = migrations.migrate(tiny_db_url, to="phase1_denormalized_tables", directory=phase_dir)
    assert [p["name"] for p in result.applied] == ["phase0_cleanup", "phase1_denormalized_tables"]
    with pytest.raises(BadInput, match="already applied") as caught:
        migrations.migrate(tiny_db_url, to="phase0_cleanup", directory=phase_dir)
    assert "rollback" in caught.value.hint
    with pytest.raises(BadInput, match="unknown phase"):
        migrations.migrate(tiny_db_url, to="phase9", directory=phase_dir)


def test_a_changed_applied_file_is_refused_naming_both_checksums(tiny_db_url, phase_dir):
    migrations.migrate(tiny_db_url, directory=phase_dir)
    path = phase_dir / "phase1_denormalized_tables.sql"
    old = migrations.load_phases(phase_dir)[1].checksum
    path.write_text(PHASE1 + "-- an innocent edit\n")
    new = migrations.load_phases(phase_dir)[1].checksum
    with pytest.raises(ProblemFound) as caught:
        migrations.migrate(tiny_db_url, directory=phase_dir)
    assert caught.value.exit_code == ExitCode.PROBLEM_FOUND
    assert path.name in caught.value.message
    assert old[:12] in caught.value.message and new[:12] in caught.value.message
    assert "`opskit rollback --to phase0_cleanup && opskit migrate`" in caught.value.hint
    assert migrations.migrate(tiny_db_url, directory=phase_dir, allow_changed=True).applied == []
    # The hint's way: rebuild from the changed phase, which records the new checksum.
    assert migrations.rollback(tiny_db_url, to="phase0_cleanup", directory=phase_dir) == [
        "phase4_critical_indexes",
        "phase1_denormalized_tables",
    ]
    migrations.migrate(tiny_db_url, directory=phase_dir)
    assert _ledger(tiny_db_url)["phase1_denormalized_tables"].checksum == new


def test_a_failing_transactional_phase_leaves_nothing_behind(tiny_db_url, phase_dir):
    (phase_dir / "phase1_denormalized_tables.sql").write_text(
        PHASE1 + "INSERT INTO opskit_note VALUES (1, 'duplicate');\n"
    )
    with pytest.raises(DatabaseError, match="statement 5") as caught:
        migrations.migrate(tiny_db_url, directory=phase_dir)
    assert caught.value.exit_code == ExitCode.ENVIRONMENT
    assert set(_ledger(tiny_db_url)) == {"phase0_cleanup"}
    with psycopg.connect(tiny_db_url) as conn:
        assert conn.execute("SELECT to_regclass('opskit_note')").fetchone()[0] is None


def test_an_interrupted_concurrent_phase_resumes_and_drops_the_invalid_index(
    tiny_db_url, phase_dir
):
    with psycopg.connect(tiny_db_url, autocommit=True) as conn:
        # A unique build over duplicates fails and leaves an INVALID index, like a killed build.
        conn.execute("ALTER TABLE votes DROP CONSTRAINT votes_pkey")
        conn.execute(
            "INSERT INTO votes SELECT user_id, project_id, vote_type, created_at FROM votes LIMIT 1"
        )
    with pytest.raises(DatabaseError, match="statement 4"):
        migrations.migrate(tiny_db_url, directory=phase_dir)
    with psycopg.connect(tiny_db_url, autocommit=True) as conn:
        assert conn.execute(
            "SELECT NOT indisvalid FROM pg_index WHERE indexrelid = 'votes_project_user_uidx'::regclass"
        ).fetchone()[0]
        steps = conn.execute("SELECT statement_no FROM opskit_migration_steps").fetchall()
        assert steps == [(3,)]  # the first index is recorded as done
        conn.execute(
            "DELETE FROM votes a USING votes b WHERE a.ctid > b.ctid "
            "AND a.user_id = b.user_id AND a.project_id = b.project_id"
        )
    notices = []

    class Recorder(migrations._Silent):
        def notice(self, message):
            notices.append(message)

    result = migrations.migrate(tiny_db_url, directory=phase_dir, progress=Recorder())
    assert [p["name"] for p in result.applied] == ["phase4_critical_indexes"]
    assert any("INVALID" in notice for notice in notices)
    with psycopg.connect(tiny_db_url) as conn:
        assert conn.execute("SELECT count(*) FROM pg_index WHERE NOT indisvalid").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM opskit_migration_steps").fetchone()[0] == 0


def test_a_statement_marked_sessions_n_runs_on_n_connections_at_once(tiny_db_url, phase_dir):
    # Each session records its backend, then waits until all three have: run one after the
    # other, the first would wait forever (statement_timeout ends it: a failure).
    (phase_dir / "phase4_critical_indexes.sql").write_text(
        "-- opskit: no-transaction\n"
        "SET lock_timeout = '5s';\n"
        "SET statement_timeout = '20s';\n"
        "CREATE TABLE IF NOT EXISTS opskit_sessions (pid integer, timeout text);\n"
        "-- opskit: sessions 3\n"
        "DO $$ BEGIN\n"
        "  INSERT INTO opskit_sessions SELECT pg_backend_pid(), current_setting('lock_timeout');\n"
        "  COMMIT;\n"
        "  WHILE (SELECT count(*) FROM opskit_sessions) < 3 LOOP PERFORM pg_sleep(0.05); END LOOP;\n"
        "END $$;\n"
    )
    result = migrations.migrate(tiny_db_url, directory=phase_dir)
    assert result.applied[-1]["name"] == "phase4_critical_indexes"
    with psycopg.connect(tiny_db_url) as conn:
        rows = conn.execute("SELECT DISTINCT pid, timeout FROM opskit_sessions").fetchall()
    assert len(rows) == 3 and {timeout for _, timeout in rows} == {"5s"}


def test_phases_build_indexes_with_parallel_workers_and_their_memory(tiny_db_url, phase_dir):
    (phase_dir / "phase4_critical_indexes.sql").write_text(
        "-- opskit: no-transaction\n"
        "SET lock_timeout = '5s';\n"
        "SET statement_timeout = '20s';\n"
        "CREATE TABLE opskit_settings AS SELECT"
        " current_setting('max_parallel_maintenance_workers')::integer AS workers,"
        " pg_size_bytes(current_setting('maintenance_work_mem')) AS memory;\n"
    )
    migrations.migrate(tiny_db_url, directory=phase_dir)
    with psycopg.connect(tiny_db_url) as conn:
        workers, memory = conn.execute("SELECT workers, memory FROM opskit_settings").fetchone()
    assert workers >= 4 and memory >= 256 * 1024 * 1024


def test_a_failing_session_fails_its_statement(tiny_db_url, phase_dir):
    (phase_dir / "phase4_critical_indexes.sql").write_text(
        "-- opskit: no-transaction\n"
        "SET lock_timeout = '5s';\n"
        "SET statement_timeout = '20s';\n"
        "CREATE TABLE IF NOT EXISTS opskit_sessions (pid integer PRIMARY KEY DEFAULT 1);\n"
        "-- opskit: sessions 2\n"
        "INSERT INTO opskit_sessions DEFAULT VALUES;\n"
    )
    with pytest.raises(DatabaseError, match="statement 4 failed: duplicate key"):
        migrations.migrate(tiny_db_url, directory=phase_dir)
    assert "phase4_critical_indexes" not in _ledger(tiny_db_url)


def test_a_second_migrate_waits_or_refuses(tiny_db_url, phase_dir):
    holder = psycopg.connect(tiny_db_url, autocommit=True)
    holder.execute(
        "SELECT pg_advisory_lock(%s, %s)", (migrations.LOCK_SPACE, migrations.MIGRATE_LOCK)
    )
    try:
        with pytest.raises(ProblemFound, match="another opskit migrate is running"):
            migrations.migrate(tiny_db_url, directory=phase_dir, wait=False)
        notices = []

        class Recorder(migrations._Silent):
            def notice(self, message):
                notices.append(message)

        released = threading.Timer(
            1.0,
            lambda: holder.execute(
                "SELECT pg_advisory_unlock(%s, %s)",
                (migrations.LOCK_SPACE, migrations.MIGRATE_LOCK),
            ),
        )
        released.start()
        started = time.monotonic()
        result = migrations.migrate(tiny_db_url, directory=phase_dir, progress=Recorder())
        assert time.monotonic() - started >= 0.9
        assert len(result.applied) == 3
        assert any("waiting" in notice for notice in notices)
    finally:
        holder.close()


def test_two_concurrent_migrates_apply_each_phase_once(tiny_db_url, phase_dir):
    results, errors = [], []

    def run():
        try:
            results.append(migrations.migrate(tiny_db_url, directory=phase_dir))
        except Exception as err:  # noqa: BLE001 - collected and asserted below
            errors.append(err)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert sorted(len(r.applied) for r in results) == [0, 3]


def test_lock_timeouts_are_retried_then_reported(tiny_db_url, phase_dir):
    (phase_dir / "phase1_denormalized_tables.sql").write_text(
        PHASE1.replace("SET lock_timeout = '5s';", "SET lock_timeout = '100ms';")
        + "ALTER TABLE users ADD COLUMN opskit_flag int;\n"
    )
    blocker = psycopg.connect(tiny_db_url)
    blocker.execute("LOCK TABLE users IN ACCESS SHARE MODE")  # an open reader
    try:
        with pytest.raises(ProblemFound, match="could not get a lock after 2 tries"):
            migrations.migrate(
                tiny_db_url,
                directory=phase_dir,
                timeouts=migrations.Timeouts(lock_retries=1, backoff_s=0.1),
            )
        threading.Timer(0.5, blocker.rollback).start()
        result = migrations.migrate(
            tiny_db_url,
            directory=phase_dir,
            timeouts=migrations.Timeouts(lock_retries=10, backoff_s=0.2),
        )
        assert "phase1_denormalized_tables" in [p["name"] for p in result.applied]
    finally:
        blocker.close()


def test_a_concurrent_build_that_timed_out_is_built_again_not_left_invalid(tiny_db_url, phase_dir):
    (phase_dir / "phase4_critical_indexes.sql").write_text(
        PHASE4.replace("SET lock_timeout = '5s';", "SET lock_timeout = '200ms';")
    )
    migrations.migrate(tiny_db_url, directory=phase_dir, to="phase1_denormalized_tables")
    writer = psycopg.connect(tiny_db_url)  # an open write: the build waits for it to end
    writer.execute("UPDATE votes SET created_at = created_at WHERE user_id = 1")
    threading.Timer(1.0, writer.rollback).start()
    try:
        migrations.migrate(
            tiny_db_url,
            directory=phase_dir,
            timeouts=migrations.Timeouts(lock_retries=20, backoff_s=0.2),
        )
    finally:
        writer.close()
    with psycopg.connect(tiny_db_url) as conn:
        valid = conn.execute(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = 'votes_type_idx'::regclass"
        ).fetchone()[0]
    assert valid


def test_rollback_runs_down_scripts_newest_first_and_keeps_app_data(tiny_db_url, phase_dir):
    with psycopg.connect(tiny_db_url) as conn:
        before = schema.table_fingerprints(conn)
    migrations.migrate(tiny_db_url, directory=phase_dir)
    assert migrations.rollback(tiny_db_url, to="phase0_cleanup", directory=phase_dir) == [
        "phase4_critical_indexes",
        "phase1_denormalized_tables",
    ]
    assert set(_ledger(tiny_db_url)) == {"phase0_cleanup"}
    assert migrations.rollback(tiny_db_url, to="base", directory=phase_dir) == ["phase0_cleanup"]
    assert migrations.rollback(tiny_db_url, to="base", directory=phase_dir) == []
    with psycopg.connect(tiny_db_url) as conn:
        assert schema.table_fingerprints(conn) == before
        assert conn.execute(
            "SELECT to_regclass('opskit_note'), to_regclass('votes_type_idx')"
        ).fetchone() == (None, None)
    assert len(migrations.migrate(tiny_db_url, directory=phase_dir).applied) == 3


def test_a_failing_down_script_names_itself_and_keeps_the_phase_applied(tiny_db_url, phase_dir):
    migrations.migrate(tiny_db_url, directory=phase_dir)
    (phase_dir / "phase1_denormalized_tables.down.sql").write_text(
        "DROP TABLE opskit_note;\nSELECT 1 / 0;\n"
    )
    with pytest.raises(DatabaseError) as failed:
        migrations.rollback(tiny_db_url, to="phase0_cleanup", directory=phase_dir)
    assert "phase1_denormalized_tables.down.sql statement 2 failed" in failed.value.message
    assert "rollback again" in failed.value.hint
    assert "phase1_denormalized_tables" in _ledger(tiny_db_url)  # and its table is still there
    with psycopg.connect(tiny_db_url) as conn:
        assert conn.execute("SELECT to_regclass('opskit_note')").fetchone()[0] is not None


def test_dry_run_plans_with_locks_and_changes_nothing(tiny_db_url, phase_dir):
    result = migrations.migrate(tiny_db_url, directory=phase_dir, dry_run=True)
    locks = {(step.phase, step.number): (step.lock, step.blocks) for step in result.plan}
    assert locks[("phase4_critical_indexes", 4)][0] == "SHARE UPDATE EXCLUSIVE"
    assert locks[("phase1_denormalized_tables", 4)][0] == "ROW EXCLUSIVE"
    assert result.applied == []
    with psycopg.connect(tiny_db_url) as conn:
        assert conn.execute("SELECT to_regclass('opskit_migrations')").fetchone()[0] is None


def test_missing_base_schema_and_unknown_files_are_environment_errors(empty_db_url, phase_dir):
    with pytest.raises(EnvironmentProblem, match="app schema"):
        migrations.migrate(empty_db_url, directory=phase_dir)
    (phase_dir / "phase7_extra.sql").write_text("SELECT 1;")
    with pytest.raises(EnvironmentProblem, match="phase7_extra.sql"):
        migrations.load_phases(phase_dir)


@pytest.mark.parametrize(
    ("statement", "lock", "blocks"),
    [
        (
            "CREATE INDEX CONCURRENTLY x ON votes (a)",
            "SHARE UPDATE EXCLUSIVE",
            "nothing (only DDL, VACUUM)",
        ),
        ("create index x on votes (a)", "SHARE", "writes"),
        (
            "-- why\nCREATE TRIGGER t AFTER INSERT ON votes FOR EACH STATEMENT EXECUTE FUNCTION f()",
            "SHARE ROW EXCLUSIVE",
            "writes",
        ),
        ("DROP TABLE IF EXISTS x", "ACCESS EXCLUSIVE", "reads and writes"),
        ("CREATE MATERIALIZED VIEW mv AS SELECT 1", "ACCESS SHARE on sources", "nothing"),
        (
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$",
            "none on existing tables",
            "nothing",
        ),
    ],
)
def test_describe_lock(statement, lock, blocks):
    assert migrations.describe_lock(statement) == (lock, blocks)


def test_a_permission_error_mid_phase_exits_3_and_records_only_what_was_applied(tiny_db_url):
    """A role that may create tables but not triggers on the app's tables (interface.md §2, §4)."""
    role = f"opskit_limited_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(tiny_db_url, autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'limited'").format(sql.Identifier(role))
        )
        admin.execute(
            sql.SQL("GRANT CREATE, USAGE ON SCHEMA public TO {}").format(sql.Identifier(role))
        )
        # UPDATE lets it LOCK the app tables (phase 0 does), not create triggers on them
        admin.execute(
            sql.SQL("GRANT SELECT, UPDATE ON ALL TABLES IN SCHEMA public TO {}").format(
                sql.Identifier(role)
            )
        )
    limited_url = psycopg.conninfo.make_conninfo(tiny_db_url, user=role, password="limited")
    try:
        result = CliRunner().invoke(
            app, ["migrate"], env={"OPSKIT_DATABASE_URL": limited_url}, catch_exceptions=False
        )
        assert result.exit_code == ExitCode.ENVIRONMENT
        error = next(line for line in result.stderr.splitlines() if line.startswith("error:"))
        assert error.startswith("error: phase1_denormalized_tables.sql statement")
        assert "permission denied for table" in error
        assert "Traceback" not in result.output and "limited@" not in result.output
        ledger = _ledger(tiny_db_url)
        assert list(ledger) == ["phase0_cleanup"]
        with psycopg.connect(tiny_db_url) as conn:  # phase 1's transaction left nothing behind
            leftovers = conn.execute(
                "SELECT count(*) FROM pg_class WHERE relname LIKE '%%_stats_base'"
            ).fetchone()[0]
        assert leftovers == 0
    finally:
        with psycopg.connect(tiny_db_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
