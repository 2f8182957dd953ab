"""The daemon (`opskit scheduler`, `python scheduler.py`): the core function of every job.

scheduler.py wires these methods to APScheduler triggers; this module holds what they do and
what makes several daemons safe at once, with PostgreSQL as the only coordinator:

- maintain: every OPSKIT_REFRESH_POLL_S, route the change log to the views' pending changes,
  then hand each view with pending changes to a pool of OPSKIT_REFRESH_WORKERS threads, each
  through `engine.refresh.apply_view` (the code path of `opskit refresh`: per-view lock, slot
  locks shared by every daemon, failure backoff). A view already being applied in this daemon is
  not submitted again; a slow view holds up no other. Each thread keeps its connection open
  (a poll with nothing to apply costs a few index probes, not a new backend).
- fold: phase1's delta rows are folded into the base rows every fold.FOLD_INTERVAL_S.
- reconcile: on OPSKIT_RECONCILE_CRON (UTC), once per slot across every daemon (the first to
  insert opskit_job_runs(job, scheduled_for) runs it); run once at start too, which catches up a
  slot missed within RECONCILE_MISFIRE_GRACE_S.
- reconcile_changed: every OPSKIT_RECONCILE_CHANGED_S, `opskit reconcile --changed --fix`: the
  keys touched since the last check (engine.changed; one check at a time across daemons).
- heartbeat: one row per daemon in opskit_daemon_heartbeats (`opskit status` lists live ones).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import psycopg
import redis
from apscheduler.triggers.cron import CronTrigger

from opskit import __version__
from opskit.core import servers
from opskit.core.db import connect, redis_client
from opskit.core.errors import OpskitError, first_line
from opskit.core.settings import Settings, mask_url
from opskit.engine import changed, fold, reconcile, refresh
from opskit.sql import queries

log = logging.getLogger(__name__)

HEARTBEAT_S = 5.0
LIVE_AFTER_HEARTBEATS = 3  # a daemon is live while its last heartbeat is this many periods old
RECONCILE_JOB = "reconcile"
RECONCILE_MISFIRE_GRACE_S = 6 * 3600
SHUTDOWN_GRACE_S = 5.0  # then running statements are cancelled, again and again, until...
SHUTDOWN_DEADLINE_S = 8.5  # ...jobs still running are abandoned: the exit stays within 10 s


class SchedulerLike(Protocol):
    def start(self) -> None: ...
    def shutdown(self, wait: bool = True) -> None: ...


@dataclass(frozen=True)
class DaemonExit:
    worker_id: str
    seconds: float
    clean: bool  # every job finished (or was cancelled) before the deadline


def _survives_outages(job: Callable) -> Callable:
    """A job that meets a database or Redis outage logs one line and runs again next time."""

    @functools.wraps(job)
    def run(self: Daemon, *args: object, **kwargs: object) -> object:
        try:
            return job(self, *args, **kwargs)
        except OpskitError as err:
            log.error("%s: %s", job.__name__, err.message)
        except (psycopg.Error, redis.RedisError) as err:
            log.error("%s: %s", job.__name__, first_line(err))
        return None

    return run


def application_name(worker_id: str) -> str:
    """The application_name of every session of the daemon `worker_id`."""
    return f"opskit-daemon {worker_id}"[:63]


def latest_slot(cron: str, now: dt.datetime, grace_s: float) -> dt.datetime | None:
    """The newest fire time of `cron` (UTC) in (now - grace_s, now], or None."""
    trigger = CronTrigger.from_crontab(cron, timezone="UTC")
    start = now - dt.timedelta(seconds=grace_s)
    latest = None
    fire = trigger.get_next_fire_time(None, start)
    while fire is not None and fire <= now:
        latest = fire
        fire = trigger.get_next_fire_time(fire, fire + dt.timedelta(microseconds=1))
    return latest


class Daemon:
    """One daemon process: its identity, its refresh pool, and the job functions."""

    def __init__(self, settings: Settings, url: str, redis_url: str) -> None:
        self.settings = settings
        self.url = url
        self.redis_url = redis_url
        self.worker_id = refresh.worker_id()
        self.application_name = application_name(self.worker_id)
        self.started_at = dt.datetime.now(dt.UTC)
        self.stopping = threading.Event()
        self._refreshers = ThreadPoolExecutor(
            settings.refresh_workers, thread_name_prefix="opskit-refresh"
        )
        self._in_flight: dict[str, Future] = {}  # view -> its apply in this daemon
        self._local = threading.local()
        self._connections: list[psycopg.Connection] = []
        self._connections_lock = threading.Lock()

    # ------------------------------------------------------------------------ jobs

    @_survives_outages
    def maintain_views(self) -> list[str]:
        """Route the change log, then hand each due view not running yet to the pool."""
        if self.stopping.is_set():
            return []
        conn = self._connection()
        refresh.route_changes(conn)
        refresh.forget_old_log(conn)
        due = refresh.due_views(conn, self.settings)
        submitted = []
        for view in due:
            if view not in self._in_flight or self._in_flight[view].done():
                self._in_flight[view] = self._refreshers.submit(self._apply_view, view)
                submitted.append(view)
        return submitted

    def _apply_view(self, view: str) -> None:
        try:
            run = refresh.apply_view(
                self._connection(), view, self.settings, should_stop=self.stopping.is_set
            )
        except (OpskitError, psycopg.Error) as err:
            log.error("applying %s: %s", view, first_line(err))
            return
        if run.status == "failed":
            log.warning("applying %s failed (will back off): %s", view, run.error)
        elif run.status == "completed":
            log.debug(
                "applied %s: %d changes, %d keys in %s ms, %s pending",
                view,
                run.changes,
                run.keys,
                run.duration_ms,
                run.pending_after,
            )

    def _connection(self) -> psycopg.Connection:
        """This thread's open connection (a new one after the last one broke)."""
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.broken:
            conn = connect(self.url, autocommit=True)
            self._local.conn = conn
            with self._connections_lock:
                self._connections.append(conn)
        return conn

    @_survives_outages
    def fold_deltas(self) -> dict[str, int]:
        """Fold phase1's pending delta rows into the base rows (fold.FOLD_BUDGET_S per run)."""
        with connect(self.url, autocommit=True) as conn:
            folded = fold.fold_pending_deltas(conn, should_stop=self.stopping.is_set)
        if any(folded.values()):
            log.debug("folded delta rows: %s", folded)
        return folded

    @_survives_outages
    def heartbeat(self) -> None:
        with connect(self.url, autocommit=True) as conn:
            conn.execute(
                queries("daemon.sql")["heartbeat"],
                {
                    "worker": self.worker_id,
                    "hostname": socket.gethostname(),
                    "pid": os.getpid(),
                    "started_at": self.started_at,
                    "version": __version__,
                },
            )
            conn.execute(queries("daemon.sql")["forget_old_heartbeats"])

    @_survives_outages
    def reconcile_latest_slot(self, now: dt.datetime | None = None) -> int | None:
        """Reconcile (with --fix) for the newest cron slot, unless a daemon already took it.

        Returns the opskit_job_runs id when this daemon ran the slot, else None.
        """
        slot = latest_slot(
            self.settings.reconcile_cron,
            now or dt.datetime.now(dt.UTC),
            RECONCILE_MISFIRE_GRACE_S,
        )
        if slot is None or self.stopping.is_set():
            return None
        daemon_sql = queries("daemon.sql")
        with connect(self.url, autocommit=True) as conn:
            claimed = conn.execute(
                daemon_sql["claim_job_slot"],
                {"job": RECONCILE_JOB, "scheduled_for": slot, "worker": self.worker_id},
            ).fetchone()
            if claimed is None:
                return None  # another daemon runs (or ran) this slot
            run_id = claimed[0]
            log.info("reconcile for the %s slot starts", slot.isoformat())
            try:
                report = reconcile.reconcile(self.settings, self.url, self.redis_url, fix=True)
            except (OpskitError, psycopg.Error, redis.RedisError) as err:
                status, detail = "failed", first_line(err)
                log.error("reconcile for the %s slot failed: %s", slot.isoformat(), detail)
            else:
                status = "completed"
                detail = json.dumps(
                    {"drift_total": report.drift_total, "reconcile_run_id": report.run_id}
                )
                level = logging.WARNING if report.drift_total else logging.INFO
                log.log(level, "reconcile found drift %d (fixed)", report.drift_total)
            conn.execute(
                daemon_sql["finish_job_run"], {"id": run_id, "status": status, "detail": detail}
            )
        return run_id

    @_survives_outages
    def reconcile_changed(self) -> int | None:
        """`reconcile --changed --fix`: check (and repair) the keys touched since the last
        check; the opskit_reconcile_runs id, or None when phase 1 keeps no touched keys."""
        if self.stopping.is_set():
            return None
        try:
            report = changed.reconcile_changed(self.settings, self.url, self.redis_url, fix=True)
        except changed.NoTouchedKeys as err:
            log.debug("reconcile --changed skipped: %s", err.message)
            return None
        level = logging.WARNING if report.drift_total else logging.DEBUG
        log.log(
            level,
            "reconcile --changed: %d keys, drift %d (fixed %d)",
            report.keys_checked,
            report.drift_total,
            sum(check.fixed for check in report.checks),
        )
        return report.run_id

    # ------------------------------------------------------------------------ lifecycle

    def stop(self, scheduler: SchedulerLike) -> bool:
        """Stop scheduling, let running jobs finish; cancel what outlasts the grace period.

        A cancelled refresh fails through its normal path (claims back to pending, run logged as
        failed). Returns True when every job ended in time.
        """
        self.stopping.set()
        signalled = time.monotonic()
        grace_until = signalled + SHUTDOWN_GRACE_S
        stopper = threading.Thread(target=scheduler.shutdown, kwargs={"wait": True}, daemon=True)
        stopper.start()
        self._refreshers.shutdown(wait=False, cancel_futures=True)
        while time.monotonic() < grace_until and (stopper.is_alive() or self._busy()):
            time.sleep(0.05)
        # A cancelled refresh still logs its failure and releases its claims (over 2 s at load
        # 10), so cancelling goes on until the deadline, not for a fixed moment.
        abandon_at = signalled + SHUTDOWN_DEADLINE_S
        while (stopper.is_alive() or self._busy()) and time.monotonic() < abandon_at:
            self._cancel_own_queries()
            time.sleep(0.2)
        clean = not (stopper.is_alive() or self._busy())
        with self._connections_lock:
            for conn in self._connections:
                conn.close()
        try:
            with connect(self.url, autocommit=True) as conn:
                conn.execute(queries("daemon.sql")["heartbeat_stopped"], {"worker": self.worker_id})
        except OpskitError as err:
            log.warning("could not record the stop: %s", err.message)
        return clean

    def _busy(self) -> bool:
        return not all(future.done() for future in list(self._in_flight.values()))

    def _cancel_own_queries(self) -> None:
        try:
            with connect(self.url, autocommit=True) as conn:
                cancelled = conn.execute(
                    queries("daemon.sql")["cancel_own_queries"],
                    {"application_name": self.application_name},
                ).fetchone()[0]
            if cancelled:
                log.warning("shutdown: cancelled %d running statements", cancelled)
        except (OpskitError, psycopg.Error) as err:
            log.warning("shutdown: could not cancel running statements: %s", first_line(err))


def start_daemon(settings: Settings) -> Daemon:
    """Check everything the daemon needs, or refuse to start (EnvironmentProblem, exit 3).

    The database and Redis must answer, phase2 must be applied (the refresh queue), and the
    bookkeeping tables are created if absent. Settings (cron, intervals) were validated already.
    """
    url = servers.resolve_database_url(settings)
    redis_url = servers.resolve_redis_url(settings)
    redis_client(redis_url).close()
    with connect(url, autocommit=True) as conn:
        refresh.known_views(conn)
        conn.execute(queries("daemon.sql")["create_tables"])
        conn.execute(queries("reconcile.sql")["create_tables"])
    return Daemon(settings, url, redis_url)


def run(settings: Settings, build_scheduler: Callable[[Daemon], SchedulerLike]) -> DaemonExit:
    """Run the daemon until SIGTERM or SIGINT; `build_scheduler` wires the jobs (scheduler.py)."""
    daemon = start_daemon(settings)
    # Every session of this process carries the name, so shutdown can cancel exactly ours.
    os.environ["PGAPPNAME"] = daemon.application_name
    stop_requested = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop_requested.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    scheduler = build_scheduler(daemon)
    log.info(
        "daemon %s started: database %s, redis %s, poll %ss, reconcile cron %r (UTC)",
        daemon.worker_id,
        mask_url(daemon.url),
        mask_url(daemon.redis_url),
        settings.refresh_poll_s,
        settings.reconcile_cron,
    )
    started = time.monotonic()
    try:
        scheduler.start()
        while not stop_requested.wait(0.2):
            pass
    finally:
        clean = daemon.stop(scheduler)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("daemon %s stopped (%s)", daemon.worker_id, "clean" if clean else "jobs cancelled")
    return DaemonExit(daemon.worker_id, round(time.monotonic() - started, 3), clean)
