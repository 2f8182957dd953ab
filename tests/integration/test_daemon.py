"""The daemon as operators run it: `python scheduler.py` processes on real servers."""

import contextlib
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

from opskit.cli import app
from opskit.engine.daemon import latest_slot
from tests.conftest import REPO_ROOT

FAST = {"OPSKIT_REFRESH_POLL_S": "0.2", "OPSKIT_RECONCILE_CRON": "* * * * *"}


@pytest.fixture
def daemons(migrated_db_url, redis_url, redis_prefix, tmp_path):
    """Factory: start a `python scheduler.py` process; every one still running is killed after."""
    started: list[subprocess.Popen] = []

    def start(**env):
        log = open(tmp_path / f"daemon-{len(started)}.log", "w")  # noqa: SIM115 (closed with the process)
        process = subprocess.Popen(
            [sys.executable, "scheduler.py"],
            cwd=REPO_ROOT,
            env={
                **{k: v for k, v in os.environ.items() if not k.startswith("OPSKIT_")},
                "OPSKIT_HOME": str(tmp_path / "home"),
                "OPSKIT_DATABASE_URL": migrated_db_url,
                "OPSKIT_REDIS_URL": redis_url,
                "OPSKIT_REDIS_PREFIX": redis_prefix,
                **FAST,
                **env,
            },
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        process.log_path = log.name
        started.append(process)
        _wait_for(lambda: _beating(migrated_db_url, process))  # up, with its signal handlers
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def _wait_for(condition, timeout=60.0, interval=0.1):  # a busy machine starts slowly
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


def _one(url, query, params=None):
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(query, params).fetchone()[0]


def _beating(url, process):
    """Whether the daemon process wrote its first heartbeat (it fails the test if it died)."""
    if process.poll() is not None:
        raise AssertionError(
            f"the daemon exited {process.returncode}: {Path(process.log_path).read_text()}"
        )
    try:
        return _one(
            url,
            "SELECT count(*) FROM opskit_daemon_heartbeats WHERE pid = %s AND stopped_at IS NULL",
            (process.pid,),
        )
    except psycopg.errors.UndefinedTable:
        return False


def _idle(url):
    """No change left to apply: none in the log, none pending for a view."""
    return _one(
        url,
        "SELECT (SELECT count(*) FROM mv_change_log) + (SELECT count(*) FROM mv_pending_changes) = 0",
    )


def _stop(process, sig=signal.SIGTERM):
    started = time.monotonic()
    process.send_signal(sig)
    code = process.wait(15)
    return code, time.monotonic() - started


def _new_chain_post(conn):
    conn.execute(
        "INSERT INTO chain_posts (chain_id, author_id, title, body) "
        "SELECT min(id), 1, 'daemon test', 'body' FROM chains"
    )


def test_latest_slot_is_the_newest_fire_time_within_the_grace():
    now = dt.datetime(2026, 1, 2, 5, 30, tzinfo=dt.UTC)
    assert latest_slot("0 3 * * *", now, 6 * 3600) == dt.datetime(2026, 1, 2, 3, 0, tzinfo=dt.UTC)
    assert latest_slot("0 3 * * *", now, 3600) is None
    assert latest_slot("*/10 * * * *", now, 3600) == now


def test_daemon_applies_folds_beats_reconciles_and_stops_on_sigterm(daemons, migrated_db_url):
    process = daemons()
    with psycopg.connect(migrated_db_url, autocommit=True) as conn:
        before = conn.execute("SELECT count(*) FROM mv_chain_posts").fetchone()[0]
        _new_chain_post(conn)
        conn.execute("UPDATE follows SET created_at = created_at WHERE follower_id = 1")
    _wait_for(lambda: _one(migrated_db_url, "SELECT count(*) FROM mv_chain_posts") == before + 1)
    # The write's dashboard deltas are folded into the base rows.
    with psycopg.connect(migrated_db_url, autocommit=True) as conn:
        conn.execute("DELETE FROM follows WHERE follower_id = 2 AND followee_id = 3")
        conn.execute("INSERT INTO follows (follower_id, followee_id) VALUES (2, 3)")
    _wait_for(lambda: _one(migrated_db_url, "SELECT count(*) = 0 FROM user_dashboard_stats_delta"))
    # The reconcile slot of the current minute was caught up at start, once.
    _wait_for(
        lambda: _one(
            migrated_db_url,
            "SELECT count(*) FROM opskit_job_runs WHERE job = 'reconcile' AND status = 'completed'",
        )
    )
    status = CliRunner().invoke(
        app, ["status", "--json"], env={"OPSKIT_DATABASE_URL": migrated_db_url}
    )
    report = json.loads(status.stdout)
    assert len(report["live_daemons"]) == 1
    assert report["refresh_staleness_last_hour"]["mv_chain_posts"]["p95_s"] > 0
    assert report["latest_job_runs"][0]["job"] == "reconcile"

    code, seconds = _stop(process)
    assert code == 0 and seconds < 10
    assert _one(
        migrated_db_url, "SELECT bool_and(stopped_at IS NOT NULL) FROM opskit_daemon_heartbeats"
    )


def test_two_daemons_never_apply_a_view_twice_at_once_and_reconcile_once_per_slot(
    daemons, migrated_db_url
):
    first, second = daemons(OPSKIT_REFRESH_WORKERS="2"), daemons(OPSKIT_REFRESH_WORKERS="2")
    stop_writing = threading.Event()

    def write_continuously():
        with psycopg.connect(migrated_db_url, autocommit=True) as conn:
            while not stop_writing.is_set():
                _new_chain_post(conn)
                conn.execute("UPDATE projects SET updated_at = now() WHERE id = 1")
                conn.execute("UPDATE follows SET created_at = created_at WHERE follower_id = 1")
                time.sleep(0.05)

    writer = threading.Thread(target=write_continuously)
    writer.start()
    try:
        time.sleep(6)
    finally:
        stop_writing.set()
        writer.join()
    _wait_for(lambda: _idle(migrated_db_url))
    for process in (first, second):
        assert _stop(process)[0] == 0

    with psycopg.connect(migrated_db_url) as conn:
        overlapping = conn.execute(
            "SELECT count(*) FROM mv_refresh_log a JOIN mv_refresh_log b "
            "ON a.view_name = b.view_name AND a.id < b.id "
            "AND a.refresh_started_at < b.refresh_finished_at "
            "AND b.refresh_started_at < a.refresh_finished_at"
        ).fetchone()[0]
        most_at_once = conn.execute(
            "SELECT max(n) FROM (SELECT count(*) AS n FROM mv_refresh_log a JOIN mv_refresh_log b "
            "ON b.refresh_started_at <= a.refresh_started_at "
            "AND a.refresh_started_at < b.refresh_finished_at GROUP BY a.id) AS at_start"
        ).fetchone()[0]
        daemons_seen = conn.execute(
            "SELECT count(*) FROM opskit_daemon_heartbeats WHERE stopped_at IS NOT NULL"
        ).fetchone()[0]
        views = conn.execute(
            "SELECT count(DISTINCT view_name) FROM mv_refresh_log WHERE status = 'completed'"
        ).fetchone()[0]
        slots = conn.execute(
            "SELECT count(*), count(DISTINCT scheduled_for) FROM opskit_job_runs "
            "WHERE job = 'reconcile'"
        ).fetchone()
        reconciles = conn.execute("SELECT count(*) FROM opskit_reconcile_runs").fetchone()[0]
    assert overlapping == 0
    assert most_at_once <= 2  # OPSKIT_REFRESH_WORKERS across both daemons
    assert daemons_seen == 2 and views >= 3
    assert slots[0] == slots[1] >= 1  # one run per slot, by one daemon
    assert reconciles == slots[0]


def _reply(conn):
    conn.execute(
        "INSERT INTO chain_post_replies (post_id, author_id, body) VALUES (1, 1, 'stuck reply')"
    )


def _replies_shown(url):
    return _one(url, "SELECT replies_count FROM mv_chain_posts WHERE post_id = 1")


@contextlib.contextmanager
def _batch_stuck_on_a_lock(url):
    """Yield once a daemon is inside a batch of mv_chain_posts, blocked on the relation's lock.

    The lock is taken first, then a reply is written: the daemon claims the change (deleting
    it from the pending changes in its batch's transaction) and blocks in the DELETE of the
    post's row. The lock is released when the block exits.
    """
    with (
        psycopg.connect(url, autocommit=True) as locker,
        psycopg.connect(url, autocommit=True) as writer,
    ):
        _wait_for(lambda: _idle(url))
        locker.execute("BEGIN")
        locker.execute("LOCK TABLE mv_chain_posts IN ACCESS EXCLUSIVE MODE")
        _reply(writer)
        _wait_for(
            lambda: _one(
                url,
                "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE "
                "'opskit-daemon %%' AND wait_event_type = 'Lock' AND query LIKE 'DELETE FROM%%'",
            )
        )
        try:
            yield
        finally:
            locker.execute("ROLLBACK")


@pytest.mark.slow
def test_a_daemon_killed_mid_batch_loses_nothing(daemons, migrated_db_url):
    victim = daemons()
    shown = _replies_shown(migrated_db_url)
    with _batch_stuck_on_a_lock(migrated_db_url):
        assert _one(migrated_db_url, "SELECT count(*) FROM mv_pending_changes") >= 1
        victim.kill()  # kill -9 in the middle of the batch
        victim.wait()
        rescuer = daemons()
    # The victim's batch rolls back when its backend finds its client gone; the rescuer
    # applies the change it had claimed.
    _wait_for(lambda: _replies_shown(migrated_db_url) == shown + 1)
    _wait_for(lambda: _idle(migrated_db_url))
    with psycopg.connect(migrated_db_url) as conn:
        batches = conn.execute(
            "SELECT worker_id FROM mv_refresh_log WHERE view_name = 'mv_chain_posts' "
            "AND status = 'completed' ORDER BY id"
        ).fetchall()
    assert batches[-1] == (f"{socket.gethostname()}:{rescuer.pid}",)
    assert (f"{socket.gethostname()}:{victim.pid}",) not in batches
    assert _stop(rescuer)[0] == 0


@pytest.mark.slow
def test_sigterm_during_a_stuck_batch_exits_within_10_s_and_keeps_its_changes(
    daemons, migrated_db_url
):
    process = daemons()
    with _batch_stuck_on_a_lock(migrated_db_url):
        code, seconds = _stop(process)
    assert seconds < 10
    assert code == 0, Path(process.log_path).read_text()
    with psycopg.connect(migrated_db_url) as conn:
        pending = conn.execute(
            "SELECT count(*) FROM mv_pending_changes WHERE view_name = 'mv_chain_posts'"
        ).fetchone()[0]
        last_batch = conn.execute(
            "SELECT status FROM mv_refresh_log WHERE view_name = 'mv_chain_posts' "
            "ORDER BY id DESC LIMIT 1"
        ).fetchone()[0]
    assert pending == 1  # the cancelled batch rolled back: its change waits for the next one
    assert last_batch == "failed"


def test_the_daemon_refuses_to_start_half_configured(
    migrated_db_url, base_db_url, redis_url, tmp_path
):
    def start(**env):
        return CliRunner().invoke(app, ["scheduler"], env=env)

    good = {"OPSKIT_DATABASE_URL": migrated_db_url, "OPSKIT_REDIS_URL": redis_url}
    bad_cron = start(**good, OPSKIT_RECONCILE_CRON="61 * * * *")
    assert bad_cron.exit_code == 2 and "OPSKIT_RECONCILE_CRON" in bad_cron.output
    negative = start(**good, OPSKIT_REFRESH_POLL_S="-1")
    assert negative.exit_code == 2 and "OPSKIT_REFRESH_POLL_S" in negative.output
    no_redis = start(**{**good, "OPSKIT_REDIS_URL": "redis://127.0.0.1:1/0"})
    assert no_redis.exit_code == 3 and "Redis" in no_redis.output
    unmigrated = start(**{**good, "OPSKIT_DATABASE_URL": base_db_url})
    assert unmigrated.exit_code == 3 and "phase2" in unmigrated.output
