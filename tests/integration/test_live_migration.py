"""Migrations on a database the app keeps writing: the migration gives way, the app never fails.

Real concurrent writers on every write path, real PostgreSQL; no wall-clock upper bound here
(the latency targets are benchmarks: tests/bench/test_live_migration_targets.py).
"""

import json
import threading
import time

import psycopg
import pytest
from typer.testing import CliRunner

from opskit.benchmarking import live_migration
from opskit.benchmarking.workload import APP_OPS
from opskit.cli import app
from opskit.core.errors import BadInput
from opskit.engine import migrations
from opskit.engine.phase_files import PHASES

HEADER = "SET lock_timeout = '400ms';\nSET statement_timeout = '1min';\n"
# A locked section taking users, then votes; the app below takes votes, then users.
TRIGGER_PHASE = (
    HEADER
    + """
CREATE FUNCTION opskit_noop() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
LOCK TABLE users, votes IN SHARE ROW EXCLUSIVE MODE;
CREATE TRIGGER trg_opskit_noop AFTER INSERT ON votes FOR EACH STATEMENT EXECUTE FUNCTION opskit_noop();
"""
)


@pytest.fixture
def trigger_phase(tmp_path):
    directory = tmp_path / "migrations"
    directory.mkdir()
    (directory / "phase1_denormalized_tables.sql").write_text(TRIGGER_PHASE)
    return directory


def _waiting_pids(url: str) -> set[int]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("SELECT pid FROM pg_locks WHERE NOT granted AND locktype = 'relation'")
        return {row[0] for row in rows}


def test_the_migration_gives_way_when_an_app_transaction_takes_its_tables_the_other_way(
    tiny_db_url, trigger_phase
):
    """The app holds votes and then wants users while the section holds users and waits for
    votes: a deadlock. The section's budget (400 ms, below deadlock_timeout) ends first, so the
    app's transaction goes through and the migration tries again."""
    user, project = 1, 1
    app = psycopg.connect(tiny_db_url)
    app.execute("DELETE FROM votes WHERE user_id = %s AND project_id = %s", (user, project))
    app.execute(
        "INSERT INTO votes (user_id, project_id, vote_type) VALUES (%s, %s, 'up')", (user, project)
    )
    outcome: dict = {}

    def run_migration() -> None:
        try:
            outcome["result"] = migrations.migrate(
                tiny_db_url,
                directory=trigger_phase,
                timeouts=migrations.Timeouts(lock_retries=20, backoff_s=0.05),
            )
        except Exception as err:  # noqa: BLE001 - reported by the assert below
            outcome["error"] = err

    migration = threading.Thread(target=run_migration)
    migration.start()
    deadline = time.monotonic() + 60
    while not _waiting_pids(tiny_db_url) and time.monotonic() < deadline:
        time.sleep(0.01)  # until the section waits for votes, holding users
    app.execute("UPDATE users SET bio = 'still here' WHERE id = %s", (user,))  # waits for users
    app.commit()  # no deadlock error: the migration let go
    app.close()
    migration.join(60)
    assert "error" not in outcome, outcome.get("error")
    assert [p["name"] for p in outcome["result"].applied] == ["phase1_denormalized_tables"]
    with psycopg.connect(tiny_db_url) as conn:
        record = conn.execute(
            "SELECT tables, lock_mode, attempts, waited_ms FROM opskit_migration_locks"
            " WHERE phase = 'phase1_denormalized_tables' AND script = 'up'"
        ).fetchone()
    assert record[:2] == (["users", "votes"], "SHARE ROW EXCLUSIVE")
    assert record[3] > 0  # it waited for the app, then got its locks


def test_a_lock_timeout_not_below_deadlock_timeout_is_refused(tiny_db_url, trigger_phase):
    with pytest.raises(BadInput, match="not below the server's deadlock_timeout"):
        migrations.migrate(
            tiny_db_url, directory=trigger_phase, timeouts=migrations.Timeouts(lock_timeout="2s")
        )
    with psycopg.connect(tiny_db_url) as conn:
        assert conn.execute("SELECT to_regproc('opskit_noop')").fetchone()[0] is None


def test_migrate_rollback_and_migrate_again_while_every_write_path_runs(tiny_db_url):
    result = live_migration.run(tiny_db_url, writers=6, slow_writers=1, settle_s=0.5)
    assert [(step.step, step.error) for step in result.steps] == [
        ("migrate", None),
        ("rollback --to base", None),
        ("migrate again", None),
    ]
    assert result.deadlocks == 0, result.deadlock_details
    assert result.errors == []
    assert result.drift == []
    # every write path ran, and the app wrote during every step
    assert set(APP_OPS) | {"slow_transaction"} <= set(result.operations)
    assert all(sum(w.operations for w in step.windows) > 0 for step in result.steps)
    # the migration never was a deadlock victim either: it gave way before any check ran
    notices = [notice for step in result.steps for notice in step.retries]
    assert not [notice for notice in notices if "DeadlockDetected" in notice]
    with psycopg.connect(tiny_db_url) as conn:
        assert set(migrations.read_ledger(conn)) == set(PHASES)
        scripts = conn.execute(
            "SELECT script, count(*) FROM opskit_migration_locks GROUP BY script ORDER BY script"
        ).fetchall()
    # phases 1-3 down and phases 0-1 up have locked sections; phases 2 and 3 create their
    # triggers one table per statement, outside a transaction, and phase 4 builds concurrently
    assert scripts == [("down", 3), ("up", 2)]


def test_dry_run_shows_the_locks_each_phase_takes_together_and_how_long_it_held_them(
    tiny_db_url,
):
    env = {"OPSKIT_DATABASE_URL": tiny_db_url}
    first = CliRunner().invoke(app, ["migrate", "--dry-run"], env=env, catch_exceptions=False)
    assert first.exit_code == 0
    lines = [line for line in first.stdout.splitlines() if "locks taken together" in line]
    # phases 0 and 1 have a locked section; phases 2 and 3 lock one table per statement, outside
    # a transaction, and phase 4 builds concurrently
    assert len(lines) == 2
    assert lines[1] == (
        "phase1_denormalized_tables: locks taken together: users, projects, votes, comments, "
        "follows, messages, intro_requests in SHARE ROW EXCLUSIVE mode (blocks writes); "
        "never run on this database"
    )
    migrations.migrate(tiny_db_url, to="phase1_denormalized_tables")
    migrations.rollback(tiny_db_url, to="base")
    again = CliRunner().invoke(
        app, ["migrate", "--dry-run", "--json"], env=env, catch_exceptions=False
    )
    groups = {group["phase"]: group for group in json.loads(again.stdout)["lock_groups"]}
    assert groups["phase0_cleanup"]["mode"] == "ACCESS EXCLUSIVE"
    assert groups["phase0_cleanup"]["tables"][0] == "users"
    held = groups["phase1_denormalized_tables"]["last_run"]
    assert held["attempts"] >= 1 and held["held_ms"] >= 0 and held["waited_ms"] >= 0
    assert "phase2_materialized_views" not in groups
