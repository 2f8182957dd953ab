"""The project's real migration files through the real CLI, on `tiny` data."""

import json
import os
import subprocess
import sys
import time
import uuid

import psycopg
import pytest
from psycopg import sql
from typer.testing import CliRunner

from opskit.cli import app
from opskit.core import schema
from opskit.engine import migrations

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
                    # this database only: on a shared server another one may be building too
                    "SELECT pid FROM pg_stat_activity WHERE query ILIKE '%CREATE INDEX CONCURRENTLY%' "
                    "AND datname = current_database() AND pid <> pg_backend_pid() "
                    "AND wait_event_type = 'Lock'"
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


# Every kind of write of docs/interface.md §5 an app makes, run as the app's own role.
APP_WRITES = (
    "INSERT INTO votes (user_id, project_id, vote_type)"
    " SELECT u.id, p.id, 'up' FROM (SELECT id FROM users ORDER BY id LIMIT 3) u,"
    " (SELECT id FROM projects WHERE deleted_at IS NULL ORDER BY id LIMIT 3) p"
    " ON CONFLICT DO NOTHING",
    "UPDATE votes SET vote_type = CASE vote_type WHEN 'up' THEN 'down' ELSE 'up' END"
    " WHERE user_id = (SELECT min(id) FROM users)",
    "DELETE FROM votes WHERE user_id = (SELECT id FROM users ORDER BY id OFFSET 2 LIMIT 1)",
    "INSERT INTO comments (project_id, user_id, body) SELECT id, 1, 'hi' FROM projects LIMIT 2",
    "DELETE FROM comments WHERE id = (SELECT min(id) FROM comments)",
    "INSERT INTO follows (follower_id, followee_id) VALUES (4, 5) ON CONFLICT DO NOTHING",
    "INSERT INTO messages (sender_id, recipient_id, body) VALUES (1, 2, 'hello')",
    "UPDATE messages SET read_at = now() WHERE recipient_id = 2",
    "DELETE FROM messages WHERE id = (SELECT max(id) FROM messages)",
    "INSERT INTO intro_requests (requester_id, target_id, status, message)"
    " VALUES (1, 3, 'pending', 'hi')",
    "UPDATE intro_requests SET status = 'accepted', responded_at = now()"
    " WHERE id = (SELECT max(id) FROM intro_requests)",
    "INSERT INTO chain_posts (chain_id, author_id, title, body)"
    " VALUES ((SELECT min(id) FROM chains), 1, 'title', 'body')",
    "INSERT INTO chain_post_replies (post_id, author_id, body)"
    " VALUES ((SELECT max(id) FROM chain_posts), 2, 'reply')",
    "UPDATE projects SET deleted_at = now() WHERE id = (SELECT min(id) FROM projects)",
    "UPDATE projects SET deleted_at = NULL WHERE id = (SELECT min(id) FROM projects)",
    "UPDATE projects SET owner_id = 6 WHERE id = (SELECT max(id) FROM projects)",
    "DELETE FROM users WHERE id = (SELECT max(id) FROM users)",
)


def _create_app_role(conn, role):
    """A role with the rights an app has on its own tables, and none on opskit's."""
    conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
    conn.execute(
        sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON {} TO {}").format(
            sql.SQL(", ").join(map(sql.Identifier, schema.APP_TABLES)), sql.Identifier(role)
        )
    )
    conn.execute(
        sql.SQL("GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {}").format(sql.Identifier(role))
    )


def _write_as(url, role):
    with psycopg.connect(url) as conn:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
        for statement in APP_WRITES:
            conn.execute(statement)


def test_grant_to_lets_the_apps_role_write_through_every_trigger_across_a_rollback(tiny_db_url):
    suffix = uuid.uuid4().hex[:8]
    granted, other = f"opskit_app_{suffix}", f"opskit_other_{suffix}"
    with psycopg.connect(tiny_db_url, autocommit=True) as admin:
        _create_app_role(admin, granted)
        _create_app_role(admin, other)
    try:
        unknown = _run(tiny_db_url, "migrate", "--grant-to", f"opskit_nobody_{suffix}")
        assert unknown.exit_code == 2
        assert f"role 'opskit_nobody_{suffix}' does not exist" in unknown.stderr
        with psycopg.connect(tiny_db_url) as conn:
            assert conn.execute("SELECT to_regclass('opskit_migrations')").fetchone()[0] is None

        migrated = _run(tiny_db_url, "migrate", "--grant-to", granted, "--json")
        assert migrated.exit_code == 0, migrated.output
        assert json.loads(migrated.stdout)["granted_to"] == [granted]
        with psycopg.connect(tiny_db_url) as conn:  # the daemon's own tables: read only
            assert conn.execute(
                "SELECT has_table_privilege(%(r)s, 'mv_refresh_log', 'SELECT'),"
                " has_table_privilege(%(r)s, 'mv_refresh_log', 'INSERT'),"
                " has_table_privilege(%(r)s, 'mv_change_routes', 'UPDATE'),"
                " has_table_privilege(%(r)s, 'mv_feed_projects', 'DELETE'),"
                " has_table_privilege(%(r)s, 'mv_feed_projects', 'SELECT'),"
                " has_table_privilege(%(r)s, 'mv_change_log', 'INSERT')",
                {"r": granted},
            ).fetchone() == (True, False, False, False, True, True)
        # The control: the app's rights alone do not let a role write through the triggers.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            _write_as(tiny_db_url, other)
        _write_as(tiny_db_url, granted)
        assert json.loads(_run(tiny_db_url, "verify", "--json").stdout)["ok"] is True

        # A privilege revoked since is found by verify and granted again by a plain migrate.
        with psycopg.connect(tiny_db_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("REVOKE INSERT ON project_stats_delta FROM {}").format(
                    sql.Identifier(granted)
                )
            )
        revoked = _run(tiny_db_url, "verify", "--json")
        assert revoked.exit_code == 1
        failed = [c for c in json.loads(revoked.stdout)["checks"] if not c["ok"]]
        assert [c["name"] for c in failed] == [f"grants to {granted}"]
        assert "missing INSERT on project_stats_delta;" in failed[0]["detail"]
        assert _run(tiny_db_url, "migrate").exit_code == 0
        assert json.loads(_run(tiny_db_url, "verify", "--json").stdout)["ok"] is True

        # Rollback drops opskit's relations (and their grants); a plain migrate grants again.
        assert _run(tiny_db_url, "rollback", "--to", "base").exit_code == 0
        again = _run(tiny_db_url, "migrate", "--json")
        assert again.exit_code == 0, again.output
        assert json.loads(again.stdout)["granted_to"] == [granted]
        _write_as(tiny_db_url, granted)
        assert json.loads(_run(tiny_db_url, "verify", "--json").stdout)["ok"] is True
        status = json.loads(_run(tiny_db_url, "status", "--json").stdout)
        assert status["granted_to"] == [{"role": granted, "role_exists": True}]
    finally:
        with psycopg.connect(tiny_db_url, autocommit=True) as admin:
            for role in (granted, other):
                admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
                admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
