"""`opskit reconcile --changed`: drift on the keys touched since the last check is found in full
and fixed; drift on untouched keys is left to the full reconcile; concurrent writes give no false
drift; two checks at once never check a key twice; the daemon runs it; status reports it."""

import json
import threading
import time

import psycopg
import pytest
import redis
from typer.testing import CliRunner

from opskit.cli import app
from opskit.core.settings import Settings
from opskit.engine import changed, refresh, votecache
from opskit.engine.daemon import Daemon
from opskit.sql import queries

pytestmark = pytest.mark.slow

FOLD = "SELECT opskit_fold_user_dashboard_deltas(100000), opskit_fold_intro_request_deltas(100000)"
# An upvote, or (when the user had voted the project already) a change to a downvote.
VOTE_OR_FLIP = (
    "INSERT INTO votes (user_id, project_id, vote_type) VALUES (%s, %s, 'up') "
    "ON CONFLICT (user_id, project_id) DO UPDATE SET vote_type = 'down'"
)


@pytest.fixture
def env(migrated_db_url, redis_url, redis_prefix):
    return {
        "OPSKIT_DATABASE_URL": migrated_db_url,
        "OPSKIT_REDIS_URL": redis_url,
        "OPSKIT_REDIS_PREFIX": redis_prefix,
    }


@pytest.fixture
def settings(env):
    return Settings.from_env(env)


@pytest.fixture
def run(env, migrated_db_url, settings):
    """`opskit reconcile ARGS --json` -> (exit code, report); starts from fresh views and no
    touched keys left by the template."""
    refresh.refresh(migrated_db_url, settings, all_views=True)

    def invoke(*args):
        result = CliRunner().invoke(
            app, ["reconcile", *args, "--json"], env=env, catch_exceptions=False
        )
        return result.exit_code, json.loads(result.stdout)

    code, report = invoke("--changed")
    assert (code, report["drift_total"]) == (0, 0), report
    return invoke


@pytest.fixture
def db(migrated_db_url):
    with psycopg.connect(migrated_db_url, autocommit=True) as conn:
        yield conn


def _checks(report):
    return {check["name"]: check for check in report["checks"]}


def _settle(conn, url, settings):
    """What the daemon does every second: fold the deltas, route and apply the views' changes."""
    conn.execute(FOLD)
    refresh.refresh(url, settings)


def _one(conn, query, params=()):
    return conn.execute(query, params).fetchone()


def _first_live_project(conn) -> int:
    return _one(conn, "SELECT min(id) FROM projects WHERE deleted_at IS NULL")[0]


def test_drift_on_touched_keys_is_found_in_full_and_fixed(
    run, db, migrated_db_url, settings, redis_url, redis_prefix
):
    users = [
        row[0]
        for row in db.execute(
            "SELECT id FROM users WHERE id NOT IN (SELECT owner_id FROM projects) ORDER BY id LIMIT 5"
        )
    ]
    follower, followee, requester, target, untouched = users[:5]
    # dashboard through the fold: a base row off by 1000, then a follow touches the user
    db.execute(
        "UPDATE user_dashboard_stats_base SET followers_count = followers_count + 1000 "
        "WHERE user_id = %s",
        (followee,),
    )
    db.execute(
        "DELETE FROM follows WHERE follower_id = %s AND followee_id = %s", (follower, followee)
    )
    db.execute(
        "INSERT INTO follows (follower_id, followee_id) VALUES (%s, %s)", (follower, followee)
    )
    # intro stats through the fold
    db.execute(
        "UPDATE intro_request_stats_base SET sent_total = sent_total + 5 WHERE user_id = %s",
        (requester,),
    )
    db.execute(
        "INSERT INTO intro_requests (requester_id, target_id, status, message) "
        "VALUES (%s, %s, 'pending', 'hello')",
        (requester, target),
    )
    # per-project counts through the fold: a comment touches the project, its counts are checked
    project, owner = _one(
        db, "SELECT id, owner_id FROM projects WHERE deleted_at IS NULL ORDER BY id LIMIT 1"
    )
    db.execute(
        "UPDATE project_stats_base SET upvotes = upvotes + 3 WHERE project_id = %s", (project,)
    )
    db.execute(
        "INSERT INTO comments (project_id, user_id, body) VALUES (%s, %s, 'nice')",
        (project, follower),
    )
    # an owner through the change log: a project write logs its owner, no delta at all
    moved_project, moved_owner = _one(
        db,
        "SELECT id, owner_id FROM projects WHERE deleted_at IS NULL AND owner_id <> %s "
        "ORDER BY id LIMIT 1",
        (owner,),
    )
    db.execute(  # the owner's folded totals off by 2
        "UPDATE user_dashboard_stats_base SET downvotes_received = downvotes_received + 2 "
        "WHERE user_id = %s",
        (moved_owner,),
    )
    db.execute("UPDATE projects SET title = title || '!' WHERE id = %s", (moved_project,))
    # a conversation whose change moves no unread count: only the messages trigger records it
    sender, recipient = _one(
        db, "SELECT user_id, other_user_id FROM message_conversations_denorm "
        "WHERE user_id < other_user_id ORDER BY 1, 2 LIMIT 1",
    )  # fmt: skip
    db.execute(
        "UPDATE message_conversations_denorm SET message_count = message_count + 7 "
        "WHERE user_id = %s AND other_user_id = %s",
        (sender, recipient),
    )
    db.execute(
        "INSERT INTO messages (sender_id, recipient_id, body, read_at) VALUES (%s, %s, 'x', now())",
        (sender, recipient),
    )
    # a cached vote set with a project too many, then its user votes (the fold records them)
    voter = _one(db, "SELECT user_id FROM votes WHERE vote_type = 'up' ORDER BY 1 LIMIT 1")[0]
    client = redis.Redis.from_url(redis_url)
    assert votecache.rebuild_users(client, db, redis_prefix, [voter]) == [voter]
    client.sadd(votecache.upvotes_key(redis_prefix, voter), 999_999_999)
    down_on = _one(
        db,
        "SELECT id FROM projects WHERE id NOT IN (SELECT project_id FROM votes WHERE user_id = %s) "
        "ORDER BY id LIMIT 1",
        (voter,),
    )[0]
    db.execute(
        "INSERT INTO votes (user_id, project_id, vote_type) VALUES (%s, %s, 'down')",
        (voter, down_on),
    )
    # untouched drift: only the full reconcile sees it
    db.execute(
        "UPDATE user_dashboard_stats_base SET following_count = following_count + 1 "
        "WHERE user_id = %s",
        (untouched,),
    )
    _settle(db, migrated_db_url, settings)
    # views: keys applied by a batch, then corrupted (three views, one with a two-column key)
    db.execute(
        "UPDATE mv_feed_projects SET comments_count = comments_count + 100 WHERE project_id = %s",
        (project,),
    )
    db.execute(
        "UPDATE mv_leaderboard_projects SET downvotes = downvotes + 1 WHERE project_id = %s",
        (moved_project,),
    )
    db.execute(
        "UPDATE mv_search_index SET popularity = popularity + 1 "
        "WHERE kind = 'project' AND entity_id = %s",
        (moved_project,),
    )

    code, report = run("--changed")
    checks = _checks(report)
    assert code == 1 and report["changed"] is True and report["keys_checked"] > 0
    # the followee (fold) and the moved project's owner (change log); the commented project's
    # counts (fold): its owner's row holds folded totals, so its drift stays in project_stats
    assert set(checks["user_dashboard_stats"]["sample"]) == {str(followee), str(moved_owner)}
    assert checks["project_stats"]["sample"] == [str(project)]
    assert checks["intro_request_stats"]["sample"] == [str(requester)]
    assert checks["message_conversations_denorm"]["sample"] == [f"{sender},{recipient}"]
    assert checks["redis_upvotes"]["sample"] == [str(voter)]
    assert sorted(checks["view_rows"]["sample"]) == sorted(
        [
            f"mv_feed_projects:{project}",
            f"mv_leaderboard_projects:{moved_project}",
            f"mv_search_index:project:{moved_project}",
        ]
    )
    assert report["drift_total"] == 2 + 1 + 1 + 1 + 1 + 3
    assert str(untouched) not in checks["user_dashboard_stats"]["sample"]

    # drifted keys stay recorded: the next check finds them again
    code, again = run("--changed")
    assert code == 1 and again["drift_total"] == report["drift_total"]

    # ... and the full reconcile finds the untouched drift too
    code, full = run()
    assert code == 1 and full["changed"] is False and full["keys_checked"] is None
    assert set(_checks(full)["user_dashboard_stats"]["sample"]) == {
        str(followee),
        str(moved_owner),
        str(untouched),
    }

    code, fixed = run("--changed", "--fix")
    assert code == 1
    assert fixed["drift_total"] == report["drift_total"]
    for check in fixed["checks"]:
        if check["drift"]:
            assert check["fixed"] == check["drift"] and check["remaining"] == 0, check
    code, after = run("--changed")
    assert (code, after["drift_total"]) == (0, 0), after
    # the project views read project_stats: its repair logged the project, a batch followed
    upvotes = "SELECT upvotes FROM mv_project_details WHERE project_id = %s"
    truth = "SELECT count(*) FROM votes WHERE project_id = %s AND vote_type = 'up'"
    _settle(db, migrated_db_url, settings)
    assert _one(db, upvotes, (project,))[0] == _one(db, truth, (project,))[0]


def test_concurrent_writes_give_no_false_drift(db, migrated_db_url, settings, redis_url, run):
    stop = threading.Event()
    errors: list[BaseException] = []
    users = [row[0] for row in db.execute("SELECT id FROM users ORDER BY id LIMIT 40")]
    projects = [row[0] for row in db.execute("SELECT id FROM projects ORDER BY id LIMIT 20")]

    def write(n: int) -> None:
        try:
            with psycopg.connect(migrated_db_url, autocommit=True) as conn:
                i = n
                while not stop.is_set():
                    i += 7
                    a, b = users[i % len(users)], users[(i * 3 + 1) % len(users)]
                    p = projects[i % len(projects)]
                    conn.execute(
                        "INSERT INTO votes (user_id, project_id, vote_type) VALUES (%s, %s, %s) "
                        "ON CONFLICT (user_id, project_id) DO UPDATE SET vote_type = "
                        "CASE WHEN votes.vote_type = 'up' THEN 'down' ELSE 'up' END",
                        (a, p, "up"),
                    )
                    conn.execute(
                        "INSERT INTO messages (sender_id, recipient_id, body) VALUES (%s, %s, 'm')",
                        (a, b),
                    )
                    conn.execute(
                        "UPDATE messages SET read_at = now() WHERE recipient_id = %s "
                        "AND read_at IS NULL",
                        (b,),
                    )
                    conn.execute(
                        "INSERT INTO comments (project_id, user_id, body) VALUES (%s, %s, 'c')",
                        (p, a),
                    )
        except BaseException as err:  # noqa: BLE001 - reported by the test
            errors.append(err)

    def maintain() -> None:
        try:
            with psycopg.connect(migrated_db_url, autocommit=True) as conn:
                while not stop.is_set():
                    _settle(conn, migrated_db_url, settings)
                    time.sleep(0.1)
        except BaseException as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(3)]
    threads.append(threading.Thread(target=maintain))
    for thread in threads:
        thread.start()
    reports = []
    try:
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            reports.append(
                changed.reconcile_changed(settings, migrated_db_url, redis_url, fix=False)
            )
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not errors, errors
    assert len(reports) >= 2
    assert sum(report.keys_checked for report in reports) > 0
    for report in reports:
        assert report.drift_total == 0, report.as_dict()
    _settle(db, migrated_db_url, settings)
    final = changed.reconcile_changed(settings, migrated_db_url, redis_url, fix=False)
    assert final.keys_checked > 0 and final.drift_total == 0, final.as_dict()


def test_two_checks_at_once_never_check_a_key_twice(db, migrated_db_url, settings, redis_url, run):
    db.execute(
        "INSERT INTO follows (follower_id, followee_id) "
        "SELECT u.id, f.id FROM (SELECT id FROM users ORDER BY id LIMIT 60) u "
        "CROSS JOIN (SELECT id FROM users ORDER BY id DESC LIMIT 2) f ON CONFLICT DO NOTHING"
    )
    db.execute(FOLD)
    touched = _one(db, "SELECT count(*) FROM opskit_reconcile_keys")[0]
    assert touched >= 60
    results = []

    def check() -> None:
        results.append(changed.reconcile_changed(settings, migrated_db_url, redis_url))

    threads = [threading.Thread(target=check) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(report.keys_checked for report in results) == [0, touched]
    assert _one(db, "SELECT count(*) FROM opskit_reconcile_keys")[0] == 0


def test_the_daemon_runs_it_and_status_reports_it(
    db, migrated_db_url, settings, redis_url, run, env
):
    db.execute(
        "INSERT INTO follows (follower_id, followee_id) "
        "SELECT u.id, (SELECT max(id) FROM users) FROM (SELECT id FROM users LIMIT 5) u "
        "ON CONFLICT DO NOTHING"
    )
    db.execute(FOLD)
    daemon = Daemon(settings, migrated_db_url, redis_url)
    run_id = daemon.reconcile_changed()
    mode, keys, fix = _one(
        db, "SELECT mode, keys_checked, fix FROM opskit_reconcile_runs WHERE id = %s", (run_id,)
    )
    assert mode == "changed" and keys >= 5 and fix is True
    result = CliRunner().invoke(app, ["status", "--json"], env=env, catch_exceptions=False)
    status = json.loads(result.stdout)
    assert status["touched_keys_pending"] == 0
    assert status["reconcile_changed"]["last_keys_checked"] == keys
    assert status["reconcile_changed"]["consistent_share_last_hour"] == 1.0


def test_without_phase_one_it_exits_3(base_db_url, redis_url):
    env = {"OPSKIT_DATABASE_URL": base_db_url, "OPSKIT_REDIS_URL": redis_url}
    result = CliRunner().invoke(app, ["reconcile", "--changed"], env=env)
    assert result.exit_code == 3
    assert result.stderr.startswith("error: no touched keys to check")
    assert "Traceback" not in result.output
    result = CliRunner().invoke(app, ["reconcile", "--changed", "--json"], env=env)
    assert result.exit_code == 3 and json.loads(result.stdout)["exit_code"] == 3


def test_a_check_claiming_a_batchs_keys_mid_batch_does_not_fail_the_batch(
    db, migrated_db_url, settings, redis_url, run
):
    """A batch runs in REPEATABLE READ; a check that claims (updates) a key after the batch's
    snapshot must not make the batch's own recording of that key a serialization failure."""
    view = "mv_leaderboard_projects"
    project = _first_live_project(db)
    for (voter,) in db.execute("SELECT id FROM users ORDER BY id LIMIT 2").fetchall():
        db.execute(VOTE_OR_FLIP, (voter, project))
    db.execute(FOLD)

    with psycopg.connect(migrated_db_url) as holder:  # pauses the batch after its snapshot
        holder.execute(f"SELECT 1 FROM {view} WHERE project_id = %s FOR UPDATE", (project,))
        runs = []
        batch = threading.Thread(
            target=lambda: runs.extend(refresh.refresh(migrated_db_url, settings, views=[view]))
        )
        batch.start()
        deadline = time.monotonic() + 30
        while not _one(
            db,
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND query LIKE %s",
            (f"%DELETE FROM%{view}%",),
        )[0]:
            assert time.monotonic() < deadline, "the batch never reached its delete"
            time.sleep(0.05)
        # A check claims every touched key, the one this batch will record among them, and
        # goes on checking (claimed rows stay until the check's end).
        db.execute(
            "INSERT INTO opskit_reconcile_keys (entity, kind, entity_id) "
            "VALUES (%s, 'project', %s) ON CONFLICT DO NOTHING",
            (view, project),
        )
        assert db.execute(queries("reconcile_changed.sql")["claim_keys"]).rowcount > 0
        holder.rollback()
    batch.join(60)
    assert [(r.view, r.status, r.error) for r in runs] == [(view, "completed", None)]


def test_the_next_routing_moves_a_batchs_keys_into_the_touched_keys(
    db, migrated_db_url, settings, run
):
    view = "mv_leaderboard_projects"
    project = _first_live_project(db)
    voter = _one(db, "SELECT max(id) FROM users")[0]
    db.execute(VOTE_OR_FLIP, (voter, project))
    db.execute(FOLD)
    refresh.refresh(migrated_db_url, settings, views=[view])
    applied = "SELECT count(*) FROM mv_applied_keys WHERE view_name = %s AND key = %s"
    touched = "SELECT count(*) FROM opskit_reconcile_keys WHERE entity = %s AND entity_id = %s"
    assert _one(db, applied, (view, project))[0] >= 1  # recorded by the batch, not yet moved
    refresh.route_changes(db)  # the daemon's next poll
    assert _one(db, "SELECT count(*) FROM mv_applied_keys")[0] == 0
    assert _one(db, touched, (view, project))[0] == 1
