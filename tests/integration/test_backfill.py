"""`opskit backfill` repairs the denormalized relations batch by batch, on real PostgreSQL."""

import json

import psycopg
from typer.testing import CliRunner

from opskit.cli import app
from opskit.engine import migrations


def _run(url, *args):
    return CliRunner().invoke(
        app, list(args), env={"OPSKIT_DATABASE_URL": url}, catch_exceptions=False
    )


def test_backfill_repairs_damaged_rows_in_batches(tiny_db_url):
    migrations.migrate(tiny_db_url, to="phase1_backfill_data")
    with psycopg.connect(tiny_db_url, autocommit=True) as conn:
        conn.execute("UPDATE user_dashboard_stats_base SET votes_cast = votes_cast + 7")
        conn.execute(  # the owner totals too
            "UPDATE user_dashboard_stats_base SET projects_count = projects_count + 2,"
            " upvotes_received = upvotes_received - 1 WHERE user_id % 5 = 0"
        )
        conn.execute("UPDATE project_stats_base SET upvotes = upvotes + 1 WHERE project_id % 2 = 0")
        conn.execute("DELETE FROM message_conversations_denorm WHERE user_id % 3 = 0")
    assert _run(tiny_db_url, "verify").exit_code == 1

    result = _run(tiny_db_url, "backfill", "--batch-size", "30", "--json")
    assert result.exit_code == 0, result.output
    by_table = {r["table"]: r for r in json.loads(result.stdout)["results"]}
    assert set(by_table) == {
        "user_dashboard_stats",
        "intro_request_stats",
        "message_conversations_denorm",
    }
    # batches of project ids, then twice of user ids (owner totals, per-user columns: 200 users
    # / 30 per batch)
    with psycopg.connect(tiny_db_url) as conn:
        project_batches = conn.execute("SELECT (max(id) - min(id)) / 30 + 1 FROM projects")
        assert by_table["user_dashboard_stats"]["batches"] == project_batches.fetchone()[0] + 14
    assert by_table["intro_request_stats"]["batches"] == 7
    assert _run(tiny_db_url, "verify").exit_code == 0


def test_one_table_only(tiny_db_url):
    migrations.migrate(tiny_db_url, to="phase1_backfill_data")
    result = _run(tiny_db_url, "backfill", "--table", "intro_request_stats", "--json")
    assert [r["table"] for r in json.loads(result.stdout)["results"]] == ["intro_request_stats"]


def test_bad_table_and_missing_phase(tiny_db_url):
    assert _run(tiny_db_url, "backfill", "--table", "users").exit_code == 2
    assert _run(tiny_db_url, "backfill", "--batch-size", "0").exit_code == 2
    missing = _run(tiny_db_url, "backfill")
    assert missing.exit_code == 3
    assert "opskit migrate" in missing.output


def test_a_batch_gives_way_to_a_project_write(tiny_db_url):
    """A project write holds its project's base row (phase1 section 5) and then wants one a
    batch already holds: the batch waits below deadlock_timeout, gives way, runs again, and
    both finish (neither is ended as a deadlock victim)."""
    import threading
    import time

    from opskit.engine.backfill import backfill

    migrations.migrate(tiny_db_url, to="phase1_backfill_data")
    with psycopg.connect(tiny_db_url) as app:
        low, high, owner = app.execute(
            "SELECT min(id), max(id), (SELECT min(id) FROM users) FROM projects"
        ).fetchone()
        app.execute("UPDATE projects SET owner_id = %s WHERE id = %s", (owner, high))
        outcome: dict = {}

        def run() -> None:
            try:
                outcome["results"] = backfill(
                    tiny_db_url, tables=["user_dashboard_stats"], batch_size=10**6
                )
            except Exception as err:  # noqa: BLE001 - reported by the assert below
                outcome["error"] = err

        thread = threading.Thread(target=run)
        thread.start()
        time.sleep(0.3)  # the batch holds the low project's base row, waits for the high one
        app.execute("UPDATE projects SET owner_id = %s WHERE id = %s", (owner, low))
        app.commit()
        thread.join(60)
    assert "error" not in outcome, outcome.get("error")
    assert _run(tiny_db_url, "verify").exit_code == 0


def test_the_phase_plans_batches_covering_every_id_and_cut_conversations_by_volume(tiny_db_url):
    migrations.migrate(tiny_db_url, to="phase1_backfill_data")
    with psycopg.connect(tiny_db_url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM opskit_backfill_batches").fetchone()[0] == 0
        conn.execute("SELECT opskit_backfill_plan(30, 100)")
        for step, id_table in [
            ("project_stats", "projects"),
            ("owner_totals", "users"),
            ("user_columns", "users"),
            ("intro_request_stats", "users"),
            ("message_conversations", "users"),
        ]:
            ranges = conn.execute(
                "SELECT lo, hi FROM opskit_backfill_batches WHERE step = %s ORDER BY lo", (step,)
            ).fetchall()
            first, last = conn.execute(f"SELECT min(id), max(id) FROM {id_table}").fetchone()
            assert ranges[0][0] == first and ranges[-1][1] > last, step
            assert all(
                hi == next_lo for (_, hi), (next_lo, _) in zip(ranges, ranges[1:], strict=False)
            ), step
        over = conn.execute(
            "SELECT b.lo, b.hi, count(*) FROM opskit_backfill_batches b"
            " JOIN (SELECT sender_id AS user_id FROM messages"
            "       UNION ALL SELECT recipient_id FROM messages) m"
            "   ON m.user_id >= b.lo AND m.user_id < b.hi"
            " WHERE b.step = 'message_conversations'"
            " GROUP BY b.lo, b.hi HAVING count(*) > 100 AND count(DISTINCT m.user_id) > 1"
        ).fetchall()
        assert over == []
        # the queue runs to its end and leaves nothing
        conn.execute("CALL opskit_backfill_queued(NULL)")
        assert conn.execute("SELECT count(*) FROM opskit_backfill_batches").fetchone()[0] == 0
    assert _run(tiny_db_url, "verify").exit_code == 0
