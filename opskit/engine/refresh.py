"""Maintain the views per key: `opskit refresh` and the daemon share this (docs/freshness.md).

Writes log what they changed in mv_change_log (row triggers of phase 2 and 3). `route_changes`
moves the log into mv_pending_changes, one row per relation the change feeds. `apply_view`
applies one relation's pending changes in bounded batches, one REPEATABLE READ transaction per
batch: delete up to BATCH_CHANGES pending rows, map them to the relation's keys
(<relation>_keys), DELETE those keys' rows and INSERT <relation>_def(keys), log the batch with
its oldest change. A change committed
after the batch's snapshot stays pending for the next one; a batch that fails or whose worker dies
rolls back and loses nothing. `full_build` rebuilds a relation from its definition.

Never two workers on one relation: the relation's advisory lock (session-level, so a worker
that dies releases it with its connection); at most OPSKIT_REFRESH_WORKERS relations at once
across every daemon (slot locks). A relation whose batches fail backs off exponentially (from
OPSKIT_REFRESH_POLL_S up to 5 minutes) without holding up the others.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime

import psycopg
from psycopg import sql

from opskit.core.db import connect
from opskit.core.errors import BadInput, EnvironmentProblem, first_line
from opskit.core.settings import Settings
from opskit.sql import queries

LOCK_SPACE_VIEW = 0x6F707376  # "opsv": one lock per relation
LOCK_SPACE_SLOT = 0x6F707373  # "opss": the maintenance slots shared by every worker
LOCK_SPACE_ROUTER = 0x6F707372  # "opsr": one router at a time
BACKOFF_MAX_S = 300.0  # a failing relation is retried at most this long after its last failure
BATCH_CHANGES = 5_000  # pending changes per batch: bounds a batch after an outage
APPLY_BUDGET_S = 2.0  # one apply_view call stops starting batches after this long
# Trending's re-scoring moves this many feed rows per transaction, and one apply_view call of
# the feed stops starting such chunks after RESCORE_BUDGET_S (its batches wait that long).
RESCORE_CHUNK_ROWS = 5_000
RESCORE_BUDGET_S = 0.5
VACUUM_LOG_AFTER_ROWS = 1_000  # see fold.VACUUM_AFTER_ROWS: the log churns like a queue
# Tables derived from a relation, brought up to date in the same transaction as the relation's
# rows for the same keys (the named block of refresh.sql that does it): search's word index.
DERIVED = {"mv_search_index": "sync_search_words"}
FRESHNESS_MAX_S = 5.0  # the promise: a write reaches every view within this (docs/interface.md §7)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MaintainedView:
    """A relation maintained per key, and its key columns."""

    name: str
    key: tuple[str, ...]

    @property
    def definition(self) -> sql.Identifier:
        return sql.Identifier(f"{self.name}_def")

    @property
    def keys_function(self) -> sql.Identifier:
        return sql.Identifier(f"{self.name}_keys")


MAINTAINED: dict[str, MaintainedView] = {
    view.name: view
    for view in (
        MaintainedView("mv_feed_projects", ("project_id",)),
        MaintainedView("mv_leaderboard_projects", ("project_id",)),
        MaintainedView("mv_leaderboard_builders", ("user_id",)),
        MaintainedView("mv_chains_discovery", ("chain_id",)),
        MaintainedView("mv_project_details", ("project_id",)),
        MaintainedView("mv_search_index", ("kind", "entity_id")),
        MaintainedView("mv_chain_posts", ("post_id",)),
        MaintainedView("mv_investors_directory", ("user_id",)),
    )
}
FEED = "mv_feed_projects"


@dataclass(frozen=True)
class RefreshRun:
    view: str
    status: str  # completed | failed | skipped (another worker holds it, or no slot) | idle
    kind: str  # apply | full
    batches: int
    changes: int  # pending changes applied
    keys: int  # rows recomputed
    duration_ms: int | None
    staleness_s: float | None  # the oldest applied change's age when its batch ended
    pending_after: int | None
    error: str | None

    def as_dict(self) -> dict:
        return asdict(self)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def view_lock_key(view: str) -> int:
    """The advisory lock key (in LOCK_SPACE_VIEW) held while `view` is maintained."""
    return zlib.crc32(view.encode()) & 0x7FFFFFFF


def known_views(conn: psycopg.Connection) -> list[str]:
    """The maintained relations the applied phases created, in MAINTAINED order."""
    if conn.execute("SELECT to_regclass('mv_change_routes') IS NULL").fetchone()[0]:
        raise EnvironmentProblem(
            "no maintained views: phase2_materialized_views is not applied",
            hint="run `opskit migrate` first",
        )
    routed = {row[0] for row in conn.execute(queries("refresh.sql")["known_views"])}
    return [name for name in MAINTAINED if name in routed]


def refresh(
    url: str,
    settings: Settings,
    *,
    views: list[str] | None = None,
    all_views: bool = False,
    full: bool = False,
) -> list[RefreshRun]:
    """Apply pending changes now: of `views`, of every view (`all_views`), or of those due.

    With `full`, rebuild `views` (or every view) from their definitions instead.
    """
    with connect(url, autocommit=True) as conn:
        known = known_views(conn)
        unknown = sorted(set(views or []) - set(known))
        if unknown:
            raise BadInput(
                f"unknown view {', '.join(unknown)}", hint=f"choose from: {', '.join(known)}"
            )
        if full:
            targets = [view for view in known if not views or view in views]
            return [full_build(conn, view, settings.refresh_workers) for view in targets]
        route_changes(conn)
        if all_views:
            targets = known
        elif views:
            targets = [view for view in known if view in views]
        else:
            targets = due_views(conn, settings)
        return [apply_view(conn, view, settings) for view in targets]


def route_changes(conn: psycopg.Connection) -> int:
    """Move the change log into each relation's pending changes; the number of log rows moved.

    One statement (a killed router loses nothing); one router at a time (another one is busy:
    0). A move of many rows vacuums the log, as the fold does its delta tables.
    """
    refresh_sql = queries("refresh.sql")
    lock = {"space": LOCK_SPACE_ROUTER, "key": 0}
    if not conn.execute(refresh_sql["try_lock"], lock).fetchone()[0]:
        return 0
    record_touched = refresh_sql["record_touched_users"] if records_touched_keys(conn) else ""
    route = sql.SQL(refresh_sql["route_changes"]).format(record_touched=sql.SQL(record_touched))
    try:
        moved = conn.execute(route).fetchone()[0]
        if record_touched:
            conn.execute(refresh_sql["collect_applied_keys"])
    finally:
        conn.execute(refresh_sql["unlock"], lock)
    if moved >= VACUUM_LOG_AFTER_ROWS:
        conn.execute("VACUUM (SKIP_LOCKED, TRUNCATE false) mv_change_log")
    return moved


def records_touched_keys(conn: psycopg.Connection) -> bool:
    """Whether phase 1's opskit_reconcile_keys exists: routing then records the owners and users
    it touches for `opskit reconcile --changed`, and moves in the keys batches applied (which
    wait in mv_applied_keys)."""
    return conn.execute("SELECT to_regclass('opskit_reconcile_keys') IS NOT NULL").fetchone()[0]


def forget_old_log(conn: psycopg.Connection) -> None:
    """Drop log rows older than a day and an hour (the monitoring queries read 24 hours)."""
    conn.execute(queries("refresh.sql")["forget_old_log"])


def due_views(conn: psycopg.Connection, settings: Settings) -> list[str]:
    """Views with pending changes, the longest waiting first (a slow view does not hold up the
    others' turn), minus those backing off after failing; and the feed once its trending scores
    are older than OPSKIT_TRENDING_MAX_AGE_S, writes or not."""
    refresh_sql = queries("refresh.sql")
    params = {"backoff_base_s": settings.refresh_poll_s, "backoff_max_s": BACKOFF_MAX_S}
    due = [row[0] for row in conn.execute(refresh_sql["due_views"], params)]
    known = set(MAINTAINED)
    due = [view for view in due if view in known]
    if (
        FEED not in due
        and conn.execute(
            refresh_sql["trending_is_old"], {"max_age_s": settings.trending_max_age_s}
        ).fetchone()[0]
    ):
        due.append(FEED)
    return due


def apply_view(
    conn: psycopg.Connection,
    view: str,
    settings: Settings,
    *,
    should_stop: Callable[[], bool] = lambda: False,
) -> RefreshRun:
    """Apply `view`'s pending changes in batches until none is left or APPLY_BUDGET_S is spent.

    `conn` autocommits. Takes the view's lock and a slot (else the run is 'skipped'); for the
    feed, first moves part of its rows to a new trending instant when theirs is older than
    OPSKIT_TRENDING_MAX_AGE_S (rescore_trending).
    """
    spec = MAINTAINED[view]
    return _locked(
        conn,
        view,
        settings.refresh_workers,
        "apply",
        lambda: _apply_batches(conn, spec, settings, should_stop),
    )


def full_build(conn: psycopg.Connection, view: str, slots: int) -> RefreshRun:
    """Rebuild `view` from its definition in one transaction (readers see the old rows until
    it commits); its pending changes are covered and dropped. Then VACUUM ANALYZE it."""
    spec = MAINTAINED[view]
    return _locked(conn, view, slots, "full", lambda: _full_build(conn, spec))


def _locked(
    conn: psycopg.Connection, view: str, slots: int, kind: str, work: Callable[[], RefreshRun]
) -> RefreshRun:
    refresh_sql = queries("refresh.sql")
    view_lock = {"space": LOCK_SPACE_VIEW, "key": view_lock_key(view)}
    if not conn.execute(refresh_sql["try_lock"], view_lock).fetchone()[0]:
        return _skipped(view, kind, "another worker is maintaining it")
    try:
        slot = _take_slot(conn, slots)
        if slot is None:
            return _skipped(view, kind, f"all {slots} maintenance slots are busy")
        try:
            return work()
        finally:
            conn.execute(refresh_sql["unlock"], slot)
    finally:
        conn.execute(refresh_sql["unlock"], view_lock)


def _skipped(view: str, kind: str, why: str) -> RefreshRun:
    return RefreshRun(view, "skipped", kind, 0, 0, 0, None, None, None, why)


def _take_slot(conn: psycopg.Connection, slots: int) -> dict | None:
    for number in range(slots):
        slot = {"space": LOCK_SPACE_SLOT, "key": number}
        if conn.execute(queries("refresh.sql")["try_lock"], slot).fetchone()[0]:
            return slot
    return None


@dataclass
class _Batch:
    started_at: datetime
    changes: int
    keys: int
    oldest_change_at: datetime | None
    pending_after: int
    staleness_s: float | None


def _apply_batches(
    conn: psycopg.Connection,
    spec: MaintainedView,
    settings: Settings,
    should_stop: Callable[[], bool],
) -> RefreshRun:
    started = time.monotonic()
    if spec.name == FEED:
        rescore_trending(conn, settings.trending_max_age_s, RESCORE_BUDGET_S)
    batches, changes, keys, worst, pending_after = 0, 0, 0, None, None
    while True:
        try:
            batch = _apply_batch(conn, spec)
        except psycopg.Error as err:
            message = first_line(err)
            _log_failure(conn, spec.name, "apply", message)
            return RefreshRun(
                spec.name, "failed", "apply", batches, changes, keys, None, worst, None, message
            )
        if batch is None:
            break
        batches += 1
        changes += batch.changes
        keys += batch.keys
        pending_after = batch.pending_after
        if batch.staleness_s is not None:
            worst = max(worst or 0.0, batch.staleness_s)
        if (
            batch.changes < BATCH_CHANGES
            or should_stop()
            or time.monotonic() - started > APPLY_BUDGET_S
        ):
            break
    duration = round((time.monotonic() - started) * 1000)
    status = "completed" if batches else "idle"
    return RefreshRun(
        spec.name, status, "apply", batches, changes, keys, duration, worst, pending_after, None
    )


def note_owners_changed(conn: psycopg.Connection, user_ids: list[int] | None) -> None:
    """Log owners whose phase-1 counts were rewritten behind the triggers' back (a repair, a
    backfill; every owner with None), and their projects, so the views that read those counts
    (the builders' leaderboard, the project views) recompute their rows. Nothing to do before
    phase 2 (no change log)."""
    if _has_change_log(conn):
        conn.execute(queries("refresh.sql")["log_owners_changed"], {"user_ids": user_ids})


def note_projects_changed(conn: psycopg.Connection, project_ids: list[int]) -> None:
    """Log projects whose project_stats rows a repair rewrote, so the project views, which read
    those counts, recompute their rows."""
    if _has_change_log(conn):
        conn.execute(queries("refresh.sql")["log_projects_changed"], {"project_ids": project_ids})


def _has_change_log(conn: psycopg.Connection) -> bool:
    return conn.execute("SELECT to_regclass('mv_change_log') IS NOT NULL").fetchone()[0]


def _begin_batch(conn: psycopg.Connection) -> None:
    # One snapshot for the claim, the keys, the delete and the insert; plans made for the
    # actual keys, so `keys IS NULL` folds away inside the definitions. No JIT: a plan is
    # priced for its costliest branch (the builders' definition, for an owner of over 200
    # projects, at 643k, over jit_above_cost), and on a server with jit on (PostgreSQL's
    # default) compiling it took 300-600 ms of a batch whose queries ran in 1 ms.
    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
    conn.execute("SET LOCAL jit = off")


def _apply_batch(conn: psycopg.Connection, spec: MaintainedView) -> _Batch | None:
    """One batch in one transaction; None when nothing was pending."""
    refresh_sql = queries("refresh.sql")
    with conn.transaction():
        _begin_batch(conn)
        started_at, entities, ids, oldest, count = conn.execute(
            refresh_sql["claim_pending"], {"view": spec.name, "limit": BATCH_CHANGES}
        ).fetchone()
        if not count:
            return None
        if "*" in entities:  # a TRUNCATE: nothing short of the whole relation is right
            keys = _rebuild_rows(conn, spec)
        else:
            keys = _apply_keys(conn, spec, entities, ids)
        return _log_batch(conn, spec.name, "apply", started_at, oldest, count, keys)


def _apply_keys(conn: psycopg.Connection, spec: MaintainedView, entities, ids) -> int:
    refresh_sql = queries("refresh.sql")
    kinds, keys = conn.execute(
        sql.SQL(refresh_sql["touched_keys"]).format(keys_function=spec.keys_function),
        {"entities": entities, "ids": ids},
    ).fetchone()
    if not keys:
        return 0
    params = {"kinds": kinds, "keys": keys}
    if len(spec.key) == 1:
        match = sql.SQL("{} = ANY (%(keys)s)").format(sql.Identifier(spec.key[0]))
    else:
        match = sql.SQL("({}) IN (SELECT * FROM unnest(%(kinds)s::text[], %(keys)s::bigint[]))")
        match = match.format(sql.SQL(", ").join(map(sql.Identifier, spec.key)))
    names = _names(spec)
    conn.execute(sql.SQL(refresh_sql["delete_keys"]).format(match=match, **names), params)
    conn.execute(sql.SQL(refresh_sql["insert_keys"]).format(**names), params)
    if spec.name in DERIVED:
        conn.execute(refresh_sql[DERIVED[spec.name]], params)
    conn.execute(refresh_sql["record_view_keys"], {"view": spec.name, **params})
    return len(keys)


def _rebuild_rows(conn: psycopg.Connection, spec: MaintainedView) -> int:
    """Replace every row of the relation with its definition's, in the open transaction."""
    refresh_sql = queries("refresh.sql")
    names = _names(spec)
    if spec.name == FEED:
        conn.execute(refresh_sql["move_trending_instant"])
    conn.execute(sql.SQL(refresh_sql["delete_all"]).format(**names))
    rows = conn.execute(sql.SQL(refresh_sql["insert_all"]).format(**names)).rowcount
    if spec.name in DERIVED:
        conn.execute(refresh_sql[DERIVED[spec.name]], {"kinds": None, "keys": None})
    return rows


def _names(spec: MaintainedView) -> dict[str, sql.Composable]:
    return {"view": sql.Identifier(spec.name), "definition": spec.definition}


def _full_build(conn: psycopg.Connection, spec: MaintainedView) -> RefreshRun:
    refresh_sql = queries("refresh.sql")
    started = time.monotonic()
    try:
        with conn.transaction():
            _begin_batch(conn)
            started_at, oldest, count = conn.execute(
                refresh_sql["claim_all_pending"], {"view": spec.name}
            ).fetchone()
            keys = _rebuild_rows(conn, spec)
            batch = _log_batch(conn, spec.name, "full", started_at, oldest, count, keys)
    except psycopg.Error as err:
        message = first_line(err)
        _log_failure(conn, spec.name, "full", message)
        return RefreshRun(spec.name, "failed", "full", 0, 0, 0, None, None, None, message)
    _vacuum(conn, spec.name)
    duration = round((time.monotonic() - started) * 1000)
    return RefreshRun(
        spec.name, "completed", "full", 1, count, keys, duration, batch.staleness_s,
        batch.pending_after, None,
    )  # fmt: skip


def _log_batch(
    conn: psycopg.Connection,
    view: str,
    kind: str,
    started_at: datetime,
    oldest: datetime | None,
    changes: int,
    keys: int,
) -> _Batch:
    if kind == "full" or keys:
        conn.execute(queries("refresh.sql")["notify_changed"], {"view": view})
    pending_after, staleness = conn.execute(
        queries("refresh.sql")["log_batch"],
        {
            "view": view,
            "kind": kind,
            "started_at": started_at,
            "oldest": oldest,
            "changes": changes,
            "keys": keys,
            "worker": worker_id(),
        },
    ).fetchone()
    return _Batch(started_at, changes, keys, oldest, pending_after, staleness)


def _log_failure(conn: psycopg.Connection, view: str, kind: str, message: str) -> None:
    try:
        conn.execute(
            queries("refresh.sql")["log_failure"],
            {"view": view, "kind": kind, "error": message, "worker": worker_id()},
        )
    except psycopg.Error as err:  # the database went away: the failure shows in our own log
        log.warning("could not log the failure of %s: %s", view, first_line(err))


def rescore_trending(conn: psycopg.Connection, max_age_s: float, budget_s: float) -> int:
    """Move the feed's rows to a new trending instant once theirs is older than `max_age_s`, in
    chunks of RESCORE_CHUNK_ROWS rows, one transaction each, until every row has moved or
    `budget_s` is spent (the next call goes on); run while holding the feed's lock. The rows
    moved."""
    refresh_sql = queries("refresh.sql")
    conn.execute(refresh_sql["start_trending_rescore"], {"max_age_s": max_age_s})
    started, moved = time.monotonic(), 0
    while True:
        with conn.transaction():
            chunk = conn.execute(
                refresh_sql["rescore_trending_chunk"], {"chunk": RESCORE_CHUNK_ROWS}
            ).fetchone()
            if chunk is None:  # no re-scoring under way
                return moved
            conn.execute(refresh_sql["notify_changed"], {"view": FEED})
        moved += chunk[0]
        if chunk[0] < RESCORE_CHUNK_ROWS or time.monotonic() - started > budget_s:
            return moved


def _vacuum(conn: psycopg.Connection, view: str) -> None:
    """A full build rewrote every row: reclaim the old ones and refresh the visibility map
    (index-only scans) and the statistics now, not when autovacuum comes by."""
    try:
        conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(view)))
    except psycopg.Error as err:  # the build itself is done; autovacuum will get there
        log.warning("vacuum of %s after its full build failed: %s", view, first_line(err))


@dataclass(frozen=True)
class DefinitionDiff:
    """How a maintained relation compares with its definition, in the caller's snapshot."""

    view: str
    rows_compared: int
    differing: list[str]  # keys whose rows differ although no change of theirs is pending
    pending: int  # differing keys with changes not applied yet (they will be)
    rebuild_pending: bool  # a TRUNCATE is pending: the whole relation will be rebuilt


def pending_keys(conn: psycopg.Connection, spec: MaintainedView) -> set[str] | None:
    """The relation's keys with changes not applied yet (routed or still in the log), as
    definition_diff names them; None when a full rebuild is pending (a TRUNCATE)."""
    refresh_sql = queries("refresh.sql")
    entities, ids = conn.execute(refresh_sql["unapplied_changes"], {"view": spec.name}).fetchone()
    if "*" in entities:
        return None
    if not entities:
        return set()
    key_text = sql.SQL("key::text" if len(spec.key) == 1 else "concat_ws(':', kind, key)")
    return set(
        conn.execute(
            sql.SQL(refresh_sql["keys_as_text"]).format(
                keys_function=spec.keys_function, key_text=key_text
            ),
            {"entities": entities, "ids": ids},
        ).fetchone()[0]
    )


def diff_against_definition(conn: psycopg.Connection, view: str) -> DefinitionDiff:
    """Compare `view` with its full definition; keys with pending changes are not drift.

    Run it in a REPEATABLE READ transaction: the relation, the definition and the pending
    changes are then read in one snapshot.
    """
    spec = MAINTAINED[view]
    refresh_sql = queries("refresh.sql")
    columns = [row[0] for row in conn.execute(refresh_sql["columns"], {"view": view})]
    if len(spec.key) == 1:
        key = sql.Identifier(spec.key[0])
    else:
        key = sql.SQL(", ").join(map(sql.Identifier, spec.key))
    names = {
        "view": sql.Identifier(view),
        "definition": spec.definition,
        "columns": sql.SQL(", ").join(map(sql.Identifier, columns)),
        "key": key,
    }
    compared, differing = conn.execute(
        sql.SQL(refresh_sql["definition_diff"]).format(**names)
    ).fetchone()
    pending = pending_keys(conn, spec)
    if pending is None:
        return DefinitionDiff(view, compared, [], len(differing), True)
    return DefinitionDiff(
        view,
        compared,
        [key for key in differing if key not in pending],
        sum(1 for key in differing if key in pending),
        False,
    )
