"""The project's real migration files through the real CLI, on `tiny` data."""

import json
import os
import subprocess
import sys
import time

import psycopg
import pytest
from typer.testing import CliRunner

from opskit import migrations, schema
from opskit.cli import app

PRESENT = [phase.name for phase in migrations.load_phases()]


def _run(url, *args):
    return CliRunner().invoke(
        app, list(args), env={"OPSKIT_DATABASE_URL": url}, catch_exceptions=False
    )


def test_all_phases_apply_verify_then_roll_back_to_base_and_again(tiny_db_url):
    with psycopg.connect(tiny_db_url) as conn:
        app_data = schema.table_fingerprints(conn)

    first = _run(tiny_db_url, "migrate", "--json")
    assert first.exit_code == 0, first.output
    assert [p["name"] for p in json.loads(first.stdout)["applied"]] == PRESENT
    assert json.loads(_run(tiny_db_url, "migrate", "--json").stdout)["applied"] == []

    verified = _run(tiny_db_url, "verify", "--json")
    assert verified.exit_code == 0, verified.output
    assert json.loads(verified.stdout)["ok"] is True

    status = json.loads(_run(tiny_db_url, "status", "--json").stdout)
    assert [(p["name"], p["state"]) for p in status["phases"]] == [(n, "applied") for n in PRESENT]

    rolled = _run(tiny_db_url, "rollback", "--to", "base", "--json")
    assert rolled.exit_code == 0, rolled.output
    assert json.loads(rolled.stdout)["rolled_back"] == list(reversed(PRESENT))
    with psycopg.connect(tiny_db_url) as conn:
        assert schema.table_fingerprints(conn) == app_data
        leftovers = conn.execute(
            "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace "
            "AND (relname LIKE 'mv\\_%' OR relname LIKE '%\\_denorm%' OR relname LIKE '%\\_stats%')"
        ).fetchone()[0]
    assert leftovers == 0
    assert _run(tiny_db_url, "migrate").exit_code == 0


def test_no_index_on_votes_names_vote_type_so_a_flip_can_stay_hot(tiny_db_url):
    # A vote flip only changes vote_type: while no index covers that column (key, INCLUDE,
    # expression or predicate), PostgreSQL can update the row in place (HOT), with no index
    # entry written. Phase 4 once had two such indexes for before-mode counts.
    assert _run(tiny_db_url, "migrate").exit_code == 0
    with psycopg.connect(tiny_db_url) as conn:
        # The index's definition spells out its keys, INCLUDE columns, expressions and predicate.
        naming = conn.execute(
            "SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = 'votes'::regclass "
            "AND pg_get_indexdef(indexrelid) LIKE '%vote_type%'"
        ).fetchall()
    assert naming == []


def test_dry_run_lists_locks_and_changes_nothing(tiny_db_url):
    result = _run(tiny_db_url, "migrate", "--dry-run", "--json")
    assert result.exit_code == 0
    plan = json.loads(result.stdout)["plan"]
    assert plan and all(step["lock"] and step["blocks"] for step in plan)
    concurrent = [s for s in plan if "CONCURRENTLY" in s["sql"] and s["sql"].lstrip("-").strip()]
    assert all(
        s["lock"] == "SHARE UPDATE EXCLUSIVE" for s in concurrent if "CREATE INDEX" in s["sql"]
    )
    with psycopg.connect(tiny_db_url) as conn:
        assert conn.execute("SELECT to_regclass('opskit_migrations')").fetchone()[0] is None


@pytest.mark.slow
def test_a_migrate_killed_during_phase4_resumes_without_invalid_indexes(tiny_db_url):
    assert _run(tiny_db_url, "migrate", "--to", "phase3_search_and_forums").exit_code == 0
    blocker = psycopg.connect(tiny_db_url)
    blocker.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    blocker.execute("SELECT 1")  # an old snapshot: a concurrent index build waits for it to end
    process = subprocess.Popen(
        [sys.executable, "-m", "opskit", "migrate"],
        env={**os.environ, "OPSKIT_DATABASE_URL": tiny_db_url},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with psycopg.connect(tiny_db_url, autocommit=True) as watcher:
            deadline = time.monotonic() + 30
            building = None
            while building is None and time.monotonic() < deadline:
                building = watcher.execute(
                    "SELECT pid FROM pg_stat_activity WHERE query ILIKE '%CREATE INDEX CONCURRENTLY%' "
                    "AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'"
                ).fetchone()
                time.sleep(0.1)
            assert building, "the index build never started waiting"
            process.kill()  # the operator's process dies ...
            watcher.execute("SELECT pg_terminate_backend(%s)", building)  # ... and its session
            process.wait(10)
            blocker.rollback()
            invalid = watcher.execute(
                "SELECT count(*) FROM pg_index WHERE NOT indisvalid"
            ).fetchone()[0]
            assert invalid == 1
    finally:
        process.kill()
        blocker.close()

    resumed = _run(tiny_db_url, "migrate", "--json")
    assert resumed.exit_code == 0, resumed.output
    with psycopg.connect(tiny_db_url) as conn:
        assert conn.execute("SELECT count(*) FROM pg_index WHERE NOT indisvalid").fetchone()[0] == 0
        assert "phase4_critical_indexes" in migrations.read_ledger(conn)
        assert conn.execute("SELECT count(*) FROM opskit_migration_steps").fetchone()[0] == 0
    assert _run(tiny_db_url, "verify").exit_code == 0
