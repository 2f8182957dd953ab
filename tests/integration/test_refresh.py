"""`opskit refresh`: per-key maintenance of the views from the change log, on real PostgreSQL."""

import json
import random
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


def _vote_up(conn, voter, project):
    conn.execute("INSERT INTO votes VALUES (%s, %s, 'up')", (voter, project))


def _drift(url):
    """{view: keys differing from the definition with no change pending}, in one snapshot."""
    with psycopg.connect(url) as conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        found = {}
        for view in refresh.known_views(conn):
            diff = refresh.diff_against_definition(conn, view)
            if diff.differing:
                found[view] = diff.differing
        return found


def _unapplied(conn):
    return conn.execute(
        "SELECT (SELECT count(*) FROM mv_change_log) + (SELECT count(*) FROM mv_pending_changes)"
    ).fetchone()[0]


def test_a_write_is_applied_to_the_keys_it_touched_and_logged_as_one_batch(migrated):
    with psycopg.connect(migrated, autocommit=True) as conn:
        project, (voter,) = _live_project_and_new_voters(conn, 1)
        before = _upvotes(conn, project)
        _vote_up(conn, voter, project)
        assert _upvotes(conn, project) == before  # not applied yet
        result = _run(migrated, "refresh", "--json")
        assert result.exit_code == 0, result.output
        runs = {run["view"]: run for run in json.loads(result.stdout)["runs"]}
        assert _upvotes(conn, project) == before + 1
        # A vote feeds the feed, both leaderboards, the project page and the search index.
        assert set(runs) == {
            "mv_feed_projects",
            "mv_leaderboard_projects",
            "mv_leaderboard_builders",
            "mv_project_details",
            "mv_search_index",
        }
        assert {(r["status"], r["batches"], r["changes"], r["keys"]) for r in runs.values()} == {
            ("completed", 1, 1, 1)
        }
        logged = conn.execute(
            "SELECT view_name, kind, status, changes_applied, keys_applied, pending_after, "
            "oldest_change_at <= refresh_finished_at, duration_ms >= 0 FROM mv_refresh_log"
        ).fetchall()
        assert sorted(logged) == sorted(
            (view, "apply", "completed", 1, 1, 0, True, True) for view in runs
        )
        assert _unapplied(conn) == 0
        # the write-up's monitoring query, unchanged: one row per view, all done
        queue = conn.execute(
            "SELECT view_name, status, refresh_requested_at, last_refresh_duration_ms "
            "FROM mv_refresh_queue ORDER BY refresh_requested_at DESC LIMIT 10"
        ).fetchall()
        assert len(queue) == 8 and {row[1] for row in queue} == {"done"}
    assert _drift(migrated) == {}
    idle = json.loads(_run(migrated, "refresh", "--all", "--json").stdout)["runs"]
    assert {run["status"] for run in idle} == {"idle"}  # nothing pending: nothing logged


def test_every_kind_of_write_reaches_every_view_exactly(migrated):
    statements = [
        "UPDATE projects SET deleted_at = now() WHERE id = 3",
        "UPDATE projects SET owner_id = 7, chain_id = 2 WHERE id = 4",
        "INSERT INTO projects (owner_id, chain_id, title) VALUES (5, 1, 'new one')",
        "DELETE FROM projects WHERE id = 6",
        "UPDATE users SET username = username || '_x', display_name = 'Renamed' WHERE id = 7",
        "UPDATE users SET role = 'investor' WHERE id = 8",
        "DELETE FROM users WHERE id = 9",
        "UPDATE chains SET slug = slug || '-x', name = 'Renamed' WHERE id = 2",
        "INSERT INTO comments (project_id, user_id, body) VALUES (10, 11, 'hi')",
        "UPDATE comments SET project_id = 12 WHERE id = (SELECT min(id) FROM comments)",
        "DELETE FROM votes WHERE (user_id, project_id) = (SELECT user_id, project_id FROM votes "
        "ORDER BY 1, 2 LIMIT 1)",
        "UPDATE votes SET vote_type = CASE vote_type WHEN 'up' THEN 'down' ELSE 'up' END "
        "WHERE (user_id, project_id) = (SELECT user_id, project_id FROM votes ORDER BY 1 DESC, "
        "2 LIMIT 1)",
        "INSERT INTO follows VALUES (20, 7) ON CONFLICT DO NOTHING",
        "DELETE FROM chain_members WHERE (chain_id, user_id) = (SELECT chain_id, user_id "
        "FROM chain_members ORDER BY 1, 2 LIMIT 1)",
        "INSERT INTO chain_posts (chain_id, author_id, title, body) VALUES (3, 7, 't', 'b')",
        "UPDATE chain_posts SET chain_id = 4 WHERE id = 2",
        "INSERT INTO chain_post_replies (post_id, author_id, body) VALUES (5, 12, 'r')",
        "INSERT INTO intro_requests (requester_id, target_id) "
        "SELECT 13, user_id FROM investor_profiles ORDER BY user_id LIMIT 1",
        "UPDATE investor_profiles SET firm = 'Moved' WHERE user_id = "
        "(SELECT min(user_id) FROM investor_profiles)",
    ]
    with psycopg.connect(migrated, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)
        assert _drift(migrated) == {}  # every difference is covered by a pending change
    runs = refresh.refresh(migrated, Settings.from_env({}), all_views=True)
    assert {run.status for run in runs} == {"completed"}
    with psycopg.connect(migrated) as conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        assert _unapplied(conn) == 0
        diffs = [refresh.diff_against_definition(conn, view) for view in refresh.MAINTAINED]
    assert [(d.view, d.differing, d.pending) for d in diffs if d.differing or d.pending] == []


def test_concurrent_writers_never_make_a_view_differ_from_its_definition(migrated):
    """Writers, two appliers and a checker at once: at every check, every key differing from
    the definition has a change pending; once the writers stop and the changes are applied,
    none differs."""
    stop = threading.Event()
    errors: list[BaseException] = []
    settings = Settings.from_env({})
    mix = [
        "INSERT INTO votes VALUES (%(u)s, %(p)s, 'up') ON CONFLICT (user_id, project_id) "
        "DO UPDATE SET vote_type = CASE votes.vote_type WHEN 'up' THEN 'down' ELSE 'up' END",
        "DELETE FROM votes WHERE user_id = %(u)s AND project_id = %(p)s",
        "INSERT INTO comments (project_id, user_id, body) VALUES (%(p)s, %(u)s, 'c')",
        "UPDATE projects SET deleted_at = CASE WHEN deleted_at IS NULL THEN now() END "
        "WHERE id = %(p)s",
        "UPDATE projects SET owner_id = %(u)s WHERE id = %(p)s",
        "INSERT INTO follows VALUES (%(u)s, %(v)s) ON CONFLICT DO NOTHING",
        "DELETE FROM follows WHERE follower_id = %(u)s",
        "UPDATE users SET display_name = md5(random()::text) WHERE id = %(u)s",
        "INSERT INTO chain_post_replies (post_id, author_id, body) "
        "SELECT id, %(u)s, 'r' FROM chain_posts ORDER BY id LIMIT 1 OFFSET %(p)s %% 50",
        "UPDATE intro_requests SET status = 'accepted' WHERE id = %(p)s",
    ]

    def guarded(work):
        def run():
            try:
                work()
            except BaseException as err:  # noqa: BLE001 - reported by the test below
                errors.append(err)
                stop.set()

        return threading.Thread(target=run)

    def write(seed):
        rng = random.Random(seed)
        with psycopg.connect(migrated, autocommit=True) as conn:
            while not stop.is_set():
                params = {
                    "u": rng.randint(1, 200),
                    "v": rng.randint(1, 200),
                    "p": rng.randint(1, 60),
                }
                try:
                    with conn.transaction():
                        for _ in range(rng.randint(1, 3)):
                            conn.execute(rng.choice(mix), params)
                except (psycopg.errors.ForeignKeyViolation, psycopg.errors.DeadlockDetected):
                    pass

    def apply_all():
        while not stop.is_set():
            refresh.refresh(migrated, settings)

    checks = []

    def check():
        while not stop.is_set():
            checks.append(_drift(migrated))

    threads = [guarded(lambda s=s: write(s)) for s in range(4)]
    threads += [guarded(apply_all), guarded(apply_all), guarded(check)]
    for thread in threads:
        thread.start()
    time.sleep(6)
    stop.set()
    for thread in threads:
        thread.join()
    assert errors == []
    assert checks and all(found == {} for found in checks), [c for c in checks if c][:1]
    refresh.refresh(migrated, settings, all_views=True)
    with psycopg.connect(migrated) as conn:
        assert _unapplied(conn) == 0
        applied = conn.execute(
            "SELECT sum(changes_applied) FROM mv_refresh_log WHERE status = 'completed'"
        ).fetchone()[0]
    assert applied > 100
    assert _drift(migrated) == {}


def test_a_change_committed_during_a_batch_is_applied_by_the_next(migrated):
    with psycopg.connect(migrated, autocommit=True) as conn:
        project, (first, second) = _live_project_and_new_voters(conn, 2)
        before = _upvotes(conn, project)
        _vote_up(conn, first, project)
        refresh.route_changes(conn)
        with psycopg.connect(migrated) as batch:  # a batch's snapshot, taken now
            batch.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            batch.execute("SELECT 1")
            _vote_up(conn, second, project)  # commits during the batch
            refresh.route_changes(conn)
            claimed = batch.execute(
                "DELETE FROM mv_pending_changes WHERE view_name = 'mv_feed_projects' "
                "RETURNING entity_id"
            ).fetchall()
            assert claimed == [(project,)]  # the first vote only: the second is not in it
            batch.rollback()
        run = refresh.apply_view(conn, "mv_feed_projects", Settings.from_env({}))
        assert run.status == "completed" and _upvotes(conn, project) == before + 2


def test_a_worker_killed_mid_batch_loses_nothing(migrated):
    with psycopg.connect(migrated, autocommit=True) as conn:
        project, (voter,) = _live_project_and_new_voters(conn, 1)
        before = _upvotes(conn, project)
        _vote_up(conn, voter, project)
        refresh.route_changes(conn)
        victim = psycopg.connect(migrated)
        victim.execute(
            "DELETE FROM mv_pending_changes WHERE view_name = 'mv_feed_projects'"
        )  # claimed, as a batch does, and then the worker dies before its commit
        conn.execute("SELECT pg_terminate_backend(%s)", (victim.info.backend_pid,))
        with pytest.raises(psycopg.OperationalError):
            victim.execute("SELECT 1")
        run = refresh.apply_view(conn, "mv_feed_projects", Settings.from_env({}))
        assert (run.status, run.changes) == ("completed", 1)
        assert _upvotes(conn, project) == before + 1


def test_two_workers_never_apply_one_view_at_once(migrated):
    with psycopg.connect(migrated, autocommit=True) as holder:
        holder.execute(
            "INSERT INTO chain_post_replies (post_id, author_id, body) VALUES (1, 1, 'r')"
        )
        holder.execute(
            "SELECT pg_advisory_lock(%s, %s)",
            (refresh.LOCK_SPACE_VIEW, refresh.view_lock_key("mv_chain_posts")),
        )
        runs = json.loads(_run(migrated, "refresh", "mv_chain_posts", "--json").stdout)["runs"]
        assert runs[0]["status"] == "skipped"
        assert (
            holder.execute(
                "SELECT count(*) FROM mv_pending_changes WHERE view_name = 'mv_chain_posts'"
            ).fetchone()[0]
            == 1
        )  # still pending for whoever holds the lock next


def test_an_outage_backlog_is_applied_in_bounded_batches(migrated, monkeypatch):
    monkeypatch.setattr(refresh, "BATCH_CHANGES", 10)
    with psycopg.connect(migrated, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO comments (project_id, user_id, body) "
            "SELECT p.id, 1, 'backlog' FROM projects p WHERE p.deleted_at IS NULL LIMIT 35"
        )
        refresh.route_changes(conn)
        run = refresh.apply_view(conn, "mv_project_details", Settings.from_env({}))
        progress = conn.execute(
            "SELECT changes_applied, pending_after FROM mv_refresh_log "
            "WHERE view_name = 'mv_project_details' ORDER BY id"
        ).fetchall()
    assert (run.status, run.batches, run.changes) == ("completed", 4, 35)
    assert progress == [(10, 25), (10, 15), (10, 5), (5, 0)]


def test_refresh_full_rebuilds_a_damaged_view_and_verify_names_its_keys(migrated):
    with psycopg.connect(migrated, autocommit=True) as conn:
        builder = conn.execute(
            "UPDATE mv_leaderboard_builders SET followers_count = followers_count + 5 "
            "WHERE user_id = (SELECT min(user_id) FROM mv_leaderboard_builders) RETURNING user_id"
        ).fetchone()[0]
        conn.execute("DELETE FROM mv_chain_posts WHERE post_id = 3")
    verify = json.loads(_run(migrated, "verify", "--json").stdout)
    failed = {c["name"]: c["detail"] for c in verify["checks"] if not c["ok"]}
    assert set(failed) == {
        "mv_leaderboard_builders equals its definition",
        "mv_chain_posts equals its definition",
    }
    assert "first differing keys: 3" in failed["mv_chain_posts equals its definition"]
    assert failed["mv_leaderboard_builders equals its definition"].endswith(
        f"first differing keys: {builder}; `opskit refresh --full` rebuilds it"
    )
    result = _run(migrated, "refresh", "--full", "mv_chain_posts", "mv_leaderboard_builders")
    assert result.exit_code == 0, result.output
    assert "completed full" in result.stdout
    assert _run(migrated, "verify").exit_code == 0
    with psycopg.connect(migrated) as conn:
        kinds = conn.execute("SELECT DISTINCT kind FROM mv_refresh_log").fetchall()
    assert kinds == [("full",)]


def test_a_truncated_source_table_rebuilds_the_views_it_feeds(migrated):
    with psycopg.connect(migrated, autocommit=True) as conn:
        conn.execute("TRUNCATE chain_post_replies")
    runs = refresh.refresh(migrated, Settings.from_env({}))
    assert {run.view for run in runs} == set(refresh.MAINTAINED)
    assert _drift(migrated) == {}


def test_bad_input(migrated, fresh_database, base_template):
    assert _run(migrated, "refresh", "mv_nope").exit_code == 2
    unmigrated = fresh_database(base_template)
    assert _run(unmigrated, "refresh", "--all").exit_code == 3


def test_a_failing_view_backs_off_and_does_not_hold_up_the_others(migrated):
    settings = Settings.from_env({"OPSKIT_REFRESH_POLL_S": "0.2"})
    with psycopg.connect(migrated, autocommit=True) as conn:
        # Every row mv_chain_posts would insert breaks this constraint: its batches fail.
        conn.execute(
            "ALTER TABLE mv_chain_posts ADD CONSTRAINT never CHECK (post_id < 0) NOT VALID"
        )
        conn.execute("INSERT INTO chain_post_replies (post_id, author_id, body) VALUES (1, 1, 'r')")
        started = time.monotonic()
        writes = 0
        while time.monotonic() - started < 3.2:
            if writes < 5 and time.monotonic() - started > writes * 0.6:
                conn.execute("UPDATE intro_requests SET message = 'm' WHERE id = 1")
                writes += 1
            refresh.refresh(migrated, settings)
            time.sleep(0.02)
        failures = conn.execute(
            "SELECT refresh_started_at, refresh_finished_at, error FROM mv_refresh_log "
            "WHERE view_name = 'mv_chain_posts' AND status = 'failed' ORDER BY id"
        ).fetchall()
        others = conn.execute(
            "SELECT count(*) FROM mv_refresh_log WHERE view_name = 'mv_investors_directory' "
            "AND status = 'completed'"
        ).fetchone()[0]
        pending = conn.execute(
            "SELECT count(*) FROM mv_pending_changes WHERE view_name = 'mv_chain_posts'"
        ).fetchone()[0]
    # 0.2, 0.4, 0.8, 1.6 s apart: 4 or 5 attempts in 3.2 s instead of ~100 without backoff
    assert 3 <= len(failures) <= 5
    assert "never" in failures[0][2]
    waits = [
        (later[0] - earlier[1]).total_seconds()
        for earlier, later in zip(failures, failures[1:], strict=False)
    ]
    assert all(wait >= 0.2 * 2**n - 0.05 for n, wait in enumerate(waits)), waits
    assert others == 5  # the other view kept applying meanwhile
    assert pending == 1  # the failed view's change is kept for the next attempt


def test_status_shows_staleness_and_pending_changes_per_view(migrated):
    with psycopg.connect(migrated, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO mv_change_log (changed_at, entity, entity_id) VALUES "
            "(now() - interval '4 seconds', 'post', 1), (now() - interval '1 second', 'post', 2)"
        )
        refresh.route_changes(conn)
        report = json.loads(_run(migrated, "status", "--json").stdout)
        assert report["refresh_queue_pending"] == 2
        assert report["pending_by_view"]["mv_chain_posts"]["pending_changes"] == 2
    _run(migrated, "refresh", "mv_chain_posts")
    report = json.loads(_run(migrated, "status", "--json").stdout)
    assert report["pending_by_view"] == {} and report["refresh_queue_pending"] == 0
    staleness = report["refresh_staleness_last_hour"]
    assert list(staleness) == ["mv_chain_posts"]
    batch = staleness["mv_chain_posts"]
    assert batch["batches"] == 1  # both changes were made visible by one batch
    assert 4 <= batch["p50_s"] == batch["p95_s"] == batch["max_s"] < 60  # from the oldest
    assert report["row_counts"]["mv_chain_posts"] > 0
    text = _run(migrated, "status").stdout
    assert "mv_chain_posts: staleness p50" in text and "mv_chain_posts:" in text


def test_old_trending_scores_are_rescored_for_one_new_instant(migrated):
    env = {"OPSKIT_TRENDING_MAX_AGE_S": "1"}
    with psycopg.connect(migrated, autocommit=True) as conn:
        project, (voter,) = _live_project_and_new_voters(conn, 1)
        old = conn.execute("SELECT scored_at FROM mv_feed_scoring").fetchone()[0]
        time.sleep(1.1)
        _vote_up(conn, voter, project)
        assert _run(migrated, "refresh", **env).exit_code == 0
        instants = conn.execute("SELECT DISTINCT scored_at FROM mv_feed_projects").fetchall()
        assert len(instants) == 1 and instants[0][0] > old
        assert instants[0][0] == conn.execute("SELECT scored_at FROM mv_feed_scoring").fetchone()[0]
        # the stored scores are the formula's at that instant, with the fresh counts
        wrong = conn.execute(
            "SELECT count(*) FROM mv_feed_projects WHERE trending_score IS DISTINCT FROM "
            "score / power(greatest(date_part('epoch', scored_at - created_at) / 3600, 0) + 2, "
            "1.8::float8)"
        ).fetchone()[0]
        assert wrong == 0
        report = json.loads(_run(migrated, "status", "--json").stdout)
        assert report["trending_age_s"] < 60
    assert _drift(migrated) == {}


def test_old_trending_scores_are_rescored_without_writes_too(migrated):
    with psycopg.connect(migrated, autocommit=True) as conn:
        old = conn.execute("SELECT scored_at FROM mv_feed_scoring").fetchone()[0]
        fresh = {"OPSKIT_TRENDING_MAX_AGE_S": "3600"}
        assert _run(migrated, "refresh", "--json", **fresh).exit_code == 0
        assert conn.execute("SELECT scored_at FROM mv_feed_scoring").fetchone()[0] == old
        time.sleep(1.1)
        assert _run(migrated, "refresh", OPSKIT_TRENDING_MAX_AGE_S="1").exit_code == 0
        assert conn.execute("SELECT DISTINCT scored_at FROM mv_feed_projects").fetchall() == [
            conn.execute("SELECT scored_at FROM mv_feed_scoring").fetchone()
        ]
        assert conn.execute("SELECT scored_at FROM mv_feed_scoring").fetchone()[0] > old


def test_retired_refresh_settings_are_refused_with_a_clear_message(migrated):
    result = _run(migrated, "refresh", OPSKIT_REFRESH_DEBOUNCE_S="5")
    assert result.exit_code == 2
    assert "OPSKIT_REFRESH_DEBOUNCE_S is retired" in result.output


def test_a_batch_runs_without_jit(migrated):
    """JIT compilation of a batch's plan (priced for its costliest key) took 300-600 ms of a
    1 ms batch on a server with jit on, PostgreSQL's default."""
    with psycopg.connect(migrated, autocommit=True) as conn:
        conn.execute("SET jit = on")
        with conn.transaction():
            refresh._begin_batch(conn)
            assert conn.execute("SELECT current_setting('jit')").fetchone()[0] == "off"
