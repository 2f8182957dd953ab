"""Refresh materialized views from the refresh queue: `opskit refresh` and the daemon share this.

For one view: take the view's lock (never two refreshes of a view at once, even across daemons)
and one of the refresh slots (at most OPSKIT_REFRESH_WORKERS at once), claim its pending requests,
advance the queue's generation (mv_refresh_generation) and wait until every transaction running
then has ended (a writer may have skipped enqueueing because it saw a request we just claimed: see
phase2_materialized_views.sql), then REFRESH ... CONCURRENTLY (and, in the same transaction, bring
the tables derived from the view up to date: DERIVED), log the run, mark done exactly the
requests claimed and VACUUM the view (its visibility map, for index-only scans). A request that
arrives during the refresh stays pending for the next run. Advisory locks are session-level, so
a worker that dies releases them with its connection; its claims go back to pending once they are
older than the lease (OPSKIT_REFRESH_MAX_WAIT_S) and we hold the view's lock. A view whose runs
fail backs off exponentially (from OPSKIT_REFRESH_POLL_S up to 5 minutes) without holding up the
other views.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import zlib
from dataclasses import asdict, dataclass

import psycopg
from psycopg import sql

from opskit.core.db import connect
from opskit.core.errors import BadInput, EnvironmentProblem, first_line
from opskit.core.settings import Settings
from opskit.sql import queries

LOCK_SPACE_VIEW = 0x6F707376  # "opsv": one lock per view
LOCK_SPACE_SLOT = 0x6F707373  # "opss": the refresh slots shared by every refresher
OLD_TRANSACTIONS_TIMEOUT_S = 60.0
BACKOFF_MAX_S = 300.0  # a failing view is retried at most this long after its last failure
# Tables derived from a view, brought up to date in the transaction of the view's refresh (the
# named block of refresh.sql that does it): search's word index (phase 3).
DERIVED = {"mv_search_index": "sync_search_words"}

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RefreshRun:
    view: str
    status: str  # completed | failed | skipped (another refresher holds the view or no slot)
    requests_done: int
    duration_ms: int | None
    error: str | None

    def as_dict(self) -> dict:
        return asdict(self)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def view_lock_key(view: str) -> int:
    """The advisory lock key (in LOCK_SPACE_VIEW) held while `view` is refreshed."""
    return zlib.crc32(view.encode()) & 0x7FFFFFFF


def known_views(conn: psycopg.Connection) -> list[str]:
    if conn.execute("SELECT to_regclass('mv_dependencies') IS NULL").fetchone()[0]:
        raise EnvironmentProblem(
            "no materialized views: phase2_materialized_views is not applied",
            hint="run `opskit migrate` first",
        )
    return [row[0] for row in conn.execute(queries("refresh.sql")["known_views"])]


def refresh(
    url: str, settings: Settings, *, views: list[str] | None = None, all_views: bool = False
) -> list[RefreshRun]:
    """Refresh `views`, or every view (`all_views`), or else the views the queue says are due."""
    refresh_sql = queries("refresh.sql")
    with connect(url, autocommit=True) as conn:
        known = known_views(conn)
        unknown = sorted(set(views or []) - set(known))
        if unknown:
            raise BadInput(
                f"unknown view {', '.join(unknown)}", hint=f"choose from: {', '.join(known)}"
            )
        release_expired_claims(conn, lease_s=settings.refresh_max_wait_s)
        if all_views:
            targets = known
        elif views:
            targets = [view for view in known if view in views]
        else:
            targets = due_views(conn, settings)
        runs = [refresh_view(conn, view, settings.refresh_workers) for view in targets]
        conn.execute(refresh_sql["forget_old_done"])
    return runs


def due_views(conn: psycopg.Connection, settings: Settings) -> list[str]:
    """Views the queue says are due (debounce / max wait), minus those backing off after failing.

    Each call is a poll: it advances the queue's generation, so writers look at the queue again
    (at most once per poll and session) and a stream of writes keeps adding young requests. It
    also asks for a refresh of mv_feed_projects once its trending scores are older than
    OPSKIT_TRENDING_MAX_AGE_S (due after the debounce window, like a write's request).
    """
    refresh_sql = queries("refresh.sql")
    conn.execute(refresh_sql["advance_generation"])
    if readable(conn, "mv_feed_projects"):  # left unpopulated, it must not stop the others
        conn.execute(
            refresh_sql["request_trending_rescore"],
            {"trending_max_age_s": settings.trending_max_age_s},
        )
    params = {
        "debounce_s": settings.refresh_debounce_s,
        "max_wait_s": settings.refresh_max_wait_s,
        "backoff_base_s": settings.refresh_poll_s,
        "backoff_max_s": BACKOFF_MAX_S,
    }
    return [row[0] for row in conn.execute(refresh_sql["due_views"], params)]


def readable(conn: psycopg.Connection, name: str) -> bool:
    """Whether relation `name` exists and holds data (an unpopulated view fails every read)."""
    return conn.execute(queries("refresh.sql")["relation_readable"], {"name": name}).fetchone()[0]


def release_expired_claims(conn: psycopg.Connection, *, lease_s: float) -> int:
    """Put back to pending the claims older than the lease whose view nobody is refreshing.

    A claim is only made while holding the view's lock, so once we hold that lock, a claim
    still marked claimed belongs to a worker that died (its session, and the lock, are gone).
    Its run still logged as running is marked failed. Returns the number of requests released.
    """
    refresh_sql = queries("refresh.sql")
    released = 0
    expired = conn.execute(refresh_sql["views_with_expired_claims"], {"lease_s": lease_s})
    for (view,) in expired.fetchall():
        view_lock = {"space": LOCK_SPACE_VIEW, "key": view_lock_key(view)}
        if not conn.execute(refresh_sql["try_lock"], view_lock).fetchone()[0]:
            continue  # a live worker is refreshing it: its claims are not orphans
        try:
            released += conn.execute(
                refresh_sql["release_expired_claims"], {"view": view, "lease_s": lease_s}
            ).rowcount
            conn.execute(refresh_sql["fail_orphaned_runs"], {"view": view})
        finally:
            conn.execute(refresh_sql["unlock"], view_lock)
    if released:
        log.warning("released %d refresh requests claimed by dead workers", released)
    return released


def refresh_view(conn: psycopg.Connection, view: str, slots: int) -> RefreshRun:
    """One refresh of `view` on an autocommit connection (see the module docstring)."""
    refresh_sql = queries("refresh.sql")
    view_lock = {"space": LOCK_SPACE_VIEW, "key": view_lock_key(view)}
    if not conn.execute(refresh_sql["try_lock"], view_lock).fetchone()[0]:
        return RefreshRun(view, "skipped", 0, None, "another refresher is refreshing it")
    try:
        # We hold the view's lock: a run of it still logged as running belongs to a dead worker.
        conn.execute(refresh_sql["fail_orphaned_runs"], {"view": view})
        slot = _take_slot(conn, slots)
        if slot is None:
            return RefreshRun(view, "skipped", 0, None, f"all {slots} refresh slots are busy")
        try:
            return _refresh_claimed(conn, view)
        finally:
            conn.execute(refresh_sql["unlock"], slot)
    finally:
        conn.execute(refresh_sql["unlock"], view_lock)


def _take_slot(conn: psycopg.Connection, slots: int) -> dict | None:
    for number in range(slots):
        slot = {"space": LOCK_SPACE_SLOT, "key": number}
        if conn.execute(queries("refresh.sql")["try_lock"], slot).fetchone()[0]:
            return slot
    return None


def _refresh_claimed(conn: psycopg.Connection, view: str) -> RefreshRun:
    refresh_sql = queries("refresh.sql")
    worker = worker_id()
    claimed = [
        row[0] for row in conn.execute(refresh_sql["claim"], {"view": view, "worker": worker})
    ]
    if claimed:
        # Writers that saw these requests pending stop relying on them (phase 2's trigger).
        conn.execute(refresh_sql["advance_generation"])
    log_id = None
    try:
        _wait_for_older_transactions(conn)
        log_id = conn.execute(
            refresh_sql["log_start"], {"view": view, "worker": worker}
        ).fetchone()[0]
        with conn.transaction():  # readers see the view and what is derived from it change together
            conn.execute(
                sql.SQL("REFRESH MATERIALIZED VIEW CONCURRENTLY {}").format(sql.Identifier(view))
            )
            if view in DERIVED:
                conn.execute(refresh_sql[DERIVED[view]])
    except (psycopg.Error, TimeoutError) as err:
        message = first_line(err)
        conn.execute(refresh_sql["release_claims"], {"ids": claimed})
        duration = None
        if log_id is not None:
            duration = _finish_log(conn, log_id, "failed", message, 0)
        return RefreshRun(view, "failed", 0, duration, message)
    with conn.transaction():
        duration = _finish_log(conn, log_id, "completed", None, len(claimed))
        conn.execute(refresh_sql["mark_done"], {"ids": claimed, "duration_ms": duration})
    _vacuum(conn, view)
    return RefreshRun(view, "completed", len(claimed), duration, None)


def _vacuum(conn: psycopg.Connection, view: str) -> None:
    """Keep the view's visibility map whole, still holding its lock.

    The rows a refresh rewrote are not all-visible, and a new view has no map at all until
    autovacuum comes by (a minute or more): the planner then prices index-only scans as heap
    reads. After `opskit migrate` on medium, trending took 5–6 ms a query instead of 0.9 ms
    until the feed view was vacuumed. A vacuum of a view that did not change skips every page.
    """
    try:
        conn.execute(sql.SQL("VACUUM {}").format(sql.Identifier(view)))
    except psycopg.Error as err:  # the refresh itself is done; autovacuum will get there
        log.warning("vacuum of %s after its refresh failed: %s", view, first_line(err))


def _finish_log(
    conn: psycopg.Connection, log_id: int, status: str, error: str | None, requests: int
) -> int:
    return conn.execute(
        queries("refresh.sql")["log_finish"],
        {"log_id": log_id, "status": status, "error": error, "requests": requests},
    ).fetchone()[0]


def _wait_for_older_transactions(conn: psycopg.Connection) -> None:
    """Wait until every transaction of this database running when the claim committed has ended."""
    refresh_sql = queries("refresh.sql")
    xids = conn.execute(refresh_sql["running_transactions"]).fetchone()[0]
    deadline = time.monotonic() + OLD_TRANSACTIONS_TIMEOUT_S
    while (
        xids
        and conn.execute(refresh_sql["transactions_still_running"], {"xids": xids}).fetchone()[0]
    ):
        if time.monotonic() > deadline:
            limit = f"{OLD_TRANSACTIONS_TIMEOUT_S:.0f} s"
            raise TimeoutError(f"a transaction older than the claim ran for over {limit}")
        time.sleep(0.01)
