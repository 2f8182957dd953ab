"""`opskit refresh`: queue-driven refresh of the materialized views on real PostgreSQL."""

import json
import threading
import time

import psycopg
import pytest
from typer.testing import CliRunner

from opskit.cli import app
from opskit.core.settings import Settings
from opskit.engine import refresh


def _run(url, *args, **env):
    return CliRunner().invoke(
        app, list(args), env={"OPSKIT_DATABASE_URL": url, **env}, catch_exceptions=False
    )


@pytest.fixture
def migrated(migrated_db_url):
    return migrated_db_url


def _upvotes(conn, project_id):
    return conn.execute(
        "SELECT upvotes FROM mv_feed_projects WHERE project_id = %s", (project_id,)
    ).fetchone()[0]


def _truth_upvotes(conn, project_id):
    return conn.execute(
        "SELECT count(*) FROM votes WHERE project_id = %s AND vote_type = 'up'", (project_id,)
    ).fetchone()[0]


def _refresh_feed(url):
    """(status, requests_done) of each run of one refresh of mv_feed_projects."""
    runs = refresh.refresh(url, Settings.from_env({}), views=["mv_feed_projects"])
    return [(r.status, r.requests_done) for r in runs]


def _vote_up(conn, voter, project):
    conn.execute("INSERT INTO votes VALUES (%s, %s, 'up')", (voter, project))


def _live_project_and_new_voters(conn, count):
    project = conn.execute(
        "SELECT project_id FROM mv_feed_projects ORDER BY project_id LIMIT 1"
    ).fetchone()[0]
    voters = [
        row[0]
        for row in conn.execute(
            "SELECT id FROM users u WHERE NOT EXISTS (SELECT FROM votes v "
            "WHERE v.user_id = u.id AND v.project_id = %s) ORDER BY id LIMIT %s",
            (project, count),
        )
    ]
    return project, voters


def test_refresh_all_logs_every_view_and_marks_requests_done(migrated):
    result = _run(migrated, "refresh", "--all", "--json")
    assert result.exit_code == 0, result.output
    runs = json.loads(result.stdout)["runs"]
    assert len(runs) == 8 and {r["status"] for r in runs} == {"completed"}
    with psycopg.connect(migrated) as conn:
        assert (
            conn.execute(
                "SELECT count(*) FROM mv_refresh_log WHERE status = 'completed' "
                "AND refresh_finished_at >= refresh_started_at AND duration_ms >= 0"
            ).fetchone()[0]
            == 8
        )
        states = dict(conn.execute("SELECT status, count(*) FROM mv_refresh_queue GROUP BY 1"))
        assert states == {"done": 8}  # the catch-up request each view got when migrated
        assert conn.execute(
            "SELECT bool_and(last_refresh_duration_ms IS NOT NULL) FROM mv_refresh_queue"
        ).fetchone()[0]


def test_a_write_shows_after_its_view_is_refreshed(migrated):
    with psycopg.connect(migrated, autocommit=True) as conn:
        project, (voter,) = _live_project_and_new_voters(conn, 1)
        before = _upvotes(conn, project)
        conn.execute(
            "INSERT INTO votes (user_id, project_id, vote_type) VALUES (%s, %s, 'up')",
            (voter, project),
        )
        assert _upvotes(conn, project) == before
        assert _run(migrated, "refresh", "mv_feed_projects").exit_code == 0
        assert _upvotes(conn, project) == before + 1


def test_due_views_wait_for_the_debounce_window(migrated):
    env = {"OPSKIT_REFRESH_DEBOUNCE_S": "0.5", "OPSKIT_REFRESH_MAX_WAIT_S": "30"}
    _run(migrated, "refresh", "--all")
    with psycopg.connect(migrated, autocommit=True) as conn:
        conn.execute("UPDATE follows SET created_at = created_at WHERE follower_id = 1")
    assert json.loads(_run(migrated, "refresh", "--json", **env).stdout)["runs"] == []
    time.sleep(0.7)
    due = {r["view"] for r in json.loads(_run(migrated, "refresh", "--json", **env).stdout)["runs"]}
    assert due == {"mv_leaderboard_builders", "mv_investors_directory", "mv_search_index"}


def test_trending_scores_older_than_the_max_age_ask_for_one_refresh(migrated):
    env = {"OPSKIT_REFRESH_DEBOUNCE_S": "0.5", "OPSKIT_TRENDING_MAX_AGE_S": "1"}

    def poll():
        return [
            (r["view"], r["requests_done"])
            for r in json.loads(_run(migrated, "refresh", "--json", **env).stdout)["runs"]
        ]

    def scored_at_and_asks(conn):
        return conn.execute(
            "SELECT (SELECT max(scored_at) FROM mv_feed_projects), count(*) FROM mv_refresh_queue "
            "WHERE status = 'pending' AND source_table = 'trending max age'"
        ).fetchone()

    _run(migrated, "refresh", "--all")
    with psycopg.connect(migrated, autocommit=True) as conn:
        scored_at, asks = scored_at_and_asks(conn)
        assert poll() == [] and asks == 0  # young scores ask for nothing
        time.sleep(1.1)
        assert poll() == [] and poll() == []  # asked once, then debounced like a write
        assert scored_at_and_asks(conn) == (scored_at, 1)
        time.sleep(0.6)
        assert poll() == [("mv_feed_projects", 1)]
        rescored_at, asks = scored_at_and_asks(conn)
        assert rescored_at > scored_at and asks == 0


def test_max_wait_refreshes_even_while_requests_keep_coming(migrated):
    env = {"OPSKIT_REFRESH_DEBOUNCE_S": "5", "OPSKIT_REFRESH_MAX_WAIT_S": "5"}
    _run(migrated, "refresh", "--all")
    with psycopg.connect(migrated, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO mv_refresh_queue (view_name, refresh_requested_at) VALUES "
            "('mv_chain_posts', now() - interval '6 seconds'), ('mv_chain_posts', now())"
        )
    runs = json.loads(_run(migrated, "refresh", "--json", **env).stdout)["runs"]
    assert [(r["view"], r["requests_done"]) for r in runs] == [("mv_chain_posts", 2)]


def test_a_writer_that_skipped_enqueueing_is_in_the_refresh_and_later_requests_stay(migrated):
    settings = Settings.from_env({})
    _run(migrated, "refresh", "--all")
    with psycopg.connect(migrated, autocommit=True) as conn:
        project, (first, skipper, late) = _live_project_and_new_voters(conn, 3)
        conn.execute("INSERT INTO votes VALUES (%s, %s, 'up')", (first, project))  # request R0
        writer = psycopg.connect(migrated)
        writer.execute("INSERT INTO votes VALUES (%s, %s, 'up')", (skipper, project))
        assert (
            conn.execute(
                "SELECT count(*) FROM mv_refresh_queue WHERE status = 'pending' "
                "AND view_name = 'mv_feed_projects'"
            ).fetchone()[0]
            == 1
        )  # the open writer saw R0 pending and added no request

        runs = []
        worker = threading.Thread(
            target=lambda: runs.extend(
                refresh.refresh(migrated, settings, views=["mv_feed_projects"])
            )
        )
        worker.start()
        time.sleep(0.5)
        assert worker.is_alive()  # waiting for the writer that was running at the claim
        conn.execute(
            "INSERT INTO votes VALUES (%s, %s, 'up')", (late, project)
        )  # R2, after the claim
        writer.commit()
        writer.close()
        worker.join(30)

        assert [(r.status, r.requests_done) for r in runs] == [("completed", 1)]
        # both committed before the refresh snapshot (taken after the writer ended): both are in
        assert _upvotes(conn, project) == _truth_upvotes(conn, project)
        assert (
            conn.execute(
                "SELECT count(*) FROM mv_refresh_queue WHERE status = 'pending' "
                "AND view_name = 'mv_feed_projects'"
            ).fetchone()[0]
            == 1
        )


def test_a_writer_that_saw_a_request_pending_enqueues_again_once_it_was_claimed(migrated):
    # The writer's session remembers the young request it saw; the refresher's claim must make
    # it look again, within the same second.
    _run(migrated, "refresh", "--all")
    with psycopg.connect(migrated, autocommit=True) as conn:
        project, (first, second, third) = _live_project_and_new_voters(conn, 3)
        _vote_up(conn, first, project)  # request R0
        _vote_up(conn, second, project)  # R0 covers it
        assert _refresh_feed(migrated) == [("completed", 1)]
        _vote_up(conn, third, project)

        assert _refresh_feed(migrated) == [("completed", 1)]
        assert _upvotes(conn, project) == _truth_upvotes(conn, project)


def test_a_repeatable_read_writer_whose_snapshot_predates_a_claim_still_enqueues(migrated):
    # Its snapshot shows the claimed request as pending, and it had no xid when the claim
    # committed, so the refresher did not wait for it: relying on that request would lose its write.
    _run(migrated, "refresh", "--all")
    with psycopg.connect(migrated, autocommit=True) as conn:
        project, (first, late) = _live_project_and_new_voters(conn, 2)
        _vote_up(conn, first, project)  # request R0
        writer = psycopg.connect(migrated)
        writer.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        writer.execute("SELECT 1")  # the snapshot, with R0 pending
        assert _refresh_feed(migrated) == [("completed", 1)]  # R0 is done
        _vote_up(writer, late, project)
        writer.commit()
        writer.close()

        assert _refresh_feed(migrated) == [("completed", 1)]
        assert _upvotes(conn, project) == _truth_upvotes(conn, project)


def test_a_repeatable_read_writer_relies_on_its_sessions_memory_only_while_nothing_was_claimed(
    migrated,
):
    # A READ COMMITTED transaction of the session remembered the young request; a REPEATABLE
    # READ one may skip on that memory (the check reads the sequence, not its snapshot) until a
    # claim advances the generation, and must never write the memory from its own snapshot.
    pending_feed = (
        "SELECT count(*) FROM mv_refresh_queue "
        "WHERE status = 'pending' AND view_name = 'mv_feed_projects'"
    )
    _run(migrated, "refresh", "--all")
    with psycopg.connect(migrated, autocommit=True) as conn:
        project, (first, second, third) = _live_project_and_new_voters(conn, 3)
        writer = psycopg.connect(migrated)
        _vote_up(writer, first, project)  # request R0, remembered by the session
        writer.commit()
        writer.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        _vote_up(writer, second, project)
        writer.commit()
        assert conn.execute(pending_feed).fetchone()[0] == 1  # skipped: R0 covers it
        writer.execute("SELECT 1")  # a snapshot with R0 pending, no xid yet
        assert _refresh_feed(migrated) == [("completed", 1)]  # claims R0: the generation moves
        _vote_up(writer, third, project)
        writer.commit()
        writer.close()

        assert conn.execute(pending_feed).fetchone()[0] == 1  # it looked again and enqueued
        assert _refresh_feed(migrated) == [("completed", 1)]
        assert _upvotes(conn, project) == _truth_upvotes(conn, project)


def test_a_refreshed_view_is_vacuumed_for_index_only_scans(migrated):
    vacuums = (
        "SELECT coalesce(vacuum_count, 0) FROM pg_stat_user_tables "
        "WHERE relname = 'mv_feed_projects'"
    )
    with psycopg.connect(migrated, autocommit=True) as conn:
        project, (voter,) = _live_project_and_new_voters(conn, 1)
        _vote_up(conn, voter, project)
        before = conn.execute(vacuums).fetchone()[0]
        assert [status for status, _ in _refresh_feed(migrated)] == ["completed"]
        assert conn.execute(vacuums).fetchone()[0] == before + 1
        # the visibility map exists now (a new view has none: relallvisible 0)
        assert (
            conn.execute(
                "SELECT relallvisible FROM pg_class WHERE relname = 'mv_feed_projects'"
            ).fetchone()[0]
            > 0
        )


def test_two_refreshers_never_refresh_one_view_at_once(migrated):
    with psycopg.connect(migrated, autocommit=True) as holder:
        holder.execute(
            "SELECT pg_advisory_lock(%s, %s)",
            (refresh.LOCK_SPACE_VIEW, refresh.view_lock_key("mv_chain_posts")),
        )
        runs = json.loads(_run(migrated, "refresh", "mv_chain_posts", "--json").stdout)["runs"]
    assert runs[0]["status"] == "skipped"


def test_bad_input(migrated, fresh_database, base_template):
    assert _run(migrated, "refresh", "mv_nope").exit_code == 2
    unmigrated = fresh_database(base_template)
    assert _run(unmigrated, "refresh", "--all").exit_code == 3


def test_a_failing_view_backs_off_and_does_not_hold_up_the_others(migrated):
    settings = Settings.from_env(
        {
            "OPSKIT_REFRESH_POLL_S": "0.2",
            "OPSKIT_REFRESH_DEBOUNCE_S": "0.1",
            "OPSKIT_REFRESH_MAX_WAIT_S": "1",
        }
    )
    refresh.refresh(migrated, settings, all_views=True)
    with psycopg.connect(migrated, autocommit=True) as conn:
        # Without its unique index, REFRESH ... CONCURRENTLY of the view fails every time.
        index = conn.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'mv_chain_posts' "
            "AND indexdef LIKE 'CREATE UNIQUE%'"
        ).fetchone()[0]
        conn.execute(f'DROP INDEX "{index}"')
        last_run_before = conn.execute("SELECT max(id) FROM mv_refresh_log").fetchone()[0]
        conn.execute(
            "INSERT INTO mv_refresh_queue (view_name, refresh_requested_at) VALUES "
            "('mv_chain_posts', now() - interval '1 minute')"
        )
        started = time.monotonic()
        other_requests = 0
        while time.monotonic() - started < 3.2:
            if other_requests < 5 and time.monotonic() - started > other_requests * 0.6:
                conn.execute(
                    "INSERT INTO mv_refresh_queue (view_name, refresh_requested_at) VALUES "
                    "('mv_investors_directory', now() - interval '1 minute')"
                )
                other_requests += 1
            refresh.refresh(migrated, settings)
            time.sleep(0.02)
        failures = conn.execute(
            "SELECT refresh_started_at, refresh_finished_at FROM mv_refresh_log "
            "WHERE view_name = 'mv_chain_posts' AND status = 'failed' ORDER BY id"
        ).fetchall()
        others = conn.execute(
            "SELECT count(*) FROM mv_refresh_log WHERE view_name = 'mv_investors_directory' "
            "AND status = 'completed' AND id > %s",
            (last_run_before,),
        ).fetchone()[0]
        pending = conn.execute(
            "SELECT count(*) FROM mv_refresh_queue WHERE view_name = 'mv_chain_posts' "
            "AND status = 'pending'"
        ).fetchone()[0]
    # 0.2, 0.4, 0.8, 1.6 s apart: 4 or 5 attempts in 3.2 s instead of ~100 without backoff
    assert 3 <= len(failures) <= 5
    waits = [
        (later[0] - earlier[1]).total_seconds()
        for earlier, later in zip(failures, failures[1:], strict=False)
    ]
    assert all(wait >= 0.2 * 2**n - 0.05 for n, wait in enumerate(waits)), waits
    assert others == 5  # the other view kept refreshing meanwhile
    assert pending == 1  # the failed view's request is kept for the next attempt


def test_claims_of_a_dead_worker_are_released_after_the_lease(migrated):
    _run(migrated, "refresh", "--all")
    with psycopg.connect(migrated, autocommit=True) as conn:
        claims = conn.execute(
            "INSERT INTO mv_refresh_queue (view_name, refresh_requested_at, status, claimed_at, "
            "claimed_by) VALUES ('mv_chain_posts', now() - interval '1 minute', 'claimed', "
            "now() - interval '1 minute', 'gone:1'), ('mv_feed_projects', now() - interval "
            "'1 minute', 'claimed', now() - interval '1 minute', 'alive:2') RETURNING id"
        ).fetchall()
        conn.execute(
            "INSERT INTO mv_refresh_log (view_name, status, worker_id) "
            "VALUES ('mv_chain_posts', 'running', 'gone:1')"
        )
        with psycopg.connect(migrated, autocommit=True) as alive:
            # A live worker holds mv_feed_projects' lock: its claim is not an orphan.
            alive.execute(
                "SELECT pg_advisory_lock(%s, %s)",
                (refresh.LOCK_SPACE_VIEW, refresh.view_lock_key("mv_feed_projects")),
            )
            _run(migrated, "refresh")
        states = conn.execute(
            "SELECT view_name, status, claimed_by FROM mv_refresh_queue WHERE id = ANY(%s) "
            "ORDER BY id",
            ([claim[0] for claim in claims],),
        ).fetchall()
        dead_run = conn.execute(
            "SELECT status FROM mv_refresh_log WHERE worker_id = 'gone:1'"
        ).fetchone()[0]
    assert states == [
        ("mv_chain_posts", "pending", None),
        ("mv_feed_projects", "claimed", "alive:2"),
    ]
    assert dead_run == "failed"  # so the view backs off one poll before its next attempt


def test_status_shows_staleness_per_view(migrated):
    _run(migrated, "refresh", "--all")
    with psycopg.connect(migrated, autocommit=True) as conn:
        conn.execute("DELETE FROM mv_refresh_queue")  # only the run below counts
        conn.execute(
            "INSERT INTO mv_refresh_queue (view_name, refresh_requested_at) VALUES "
            "('mv_chain_posts', now() - interval '4 seconds'), "
            "('mv_chain_posts', now() - interval '1 second')"
        )
    _run(migrated, "refresh", "mv_chain_posts")
    report = json.loads(_run(migrated, "status", "--json").stdout)
    staleness = report["refresh_staleness_last_hour"]
    assert list(staleness) == ["mv_chain_posts"]
    run = staleness["mv_chain_posts"]
    assert run["runs"] == 1  # both requests were made visible by one refresh
    assert 4 <= run["p50_s"] == run["p95_s"] < 60  # from the oldest request to the end


def test_status_shows_unfolded_deltas_and_the_age_of_the_trending_scores(migrated):
    _run(migrated, "refresh", "mv_feed_projects")
    with psycopg.connect(migrated, autocommit=True) as conn:
        conn.execute("SELECT opskit_fold_user_dashboard_deltas(1000000)")
        project, (voter,) = _live_project_and_new_voters(conn, 1)
        _vote_up(conn, voter, project)
        scored_at = conn.execute("SELECT max(scored_at) FROM mv_feed_projects").fetchone()[0]
    time.sleep(1.1)
    report = json.loads(_run(migrated, "status", "--json").stdout)
    assert report["pending_deltas"]["project_stats_delta"] == 1  # the vote, not folded yet
    assert report["pending_deltas"]["user_dashboard_stats_delta"] == 0
    assert report["trending_scored_at"] == str(scored_at)
    assert 1 <= report["trending_age_s"] < 60
    text = _run(migrated, "status").stdout
    assert "project_stats_delta 1" in text and "trending scored for" in text


def test_an_unpopulated_feed_view_holds_up_neither_the_other_views_nor_status(migrated):
    env = {"OPSKIT_REFRESH_DEBOUNCE_S": "0.5", "OPSKIT_TRENDING_MAX_AGE_S": "1"}
    _run(migrated, "refresh", "--all")
    with psycopg.connect(migrated, autocommit=True) as conn:
        conn.execute("REFRESH MATERIALIZED VIEW mv_feed_projects WITH NO DATA")
        conn.execute(
            "INSERT INTO mv_refresh_queue (view_name, refresh_requested_at) "
            "VALUES ('mv_chain_posts', now() - interval '10 seconds')"
        )
    time.sleep(1.1)
    result = _run(migrated, "refresh", "--json", **env)
    assert result.exit_code == 0, result.output
    runs = json.loads(result.stdout)["runs"]
    assert [(r["view"], r["status"]) for r in runs] == [("mv_chain_posts", "completed")]
    status = _run(migrated, "status", "--json")
    assert status.exit_code == 0, status.output
    assert json.loads(status.stdout)["trending_scored_at"] is None
