"""Fold phase1's pending delta rows into their base rows: the daemon's fold job, and the fold
that `opskit bench-writes` runs beside its writers as the daemon would."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

import psycopg
from psycopg import sql

from opskit.core.db import connect

FOLD_INTERVAL_S = 1.0  # how often the daemon folds
FOLD_BATCH_ROWS = 10_000
FOLD_BUDGET_S = 2.0  # one fold run stops after this long; the next run goes on
# The phase-1 functions (max_rows integer) that move delta rows into the base rows and return
# how many they moved, with the delta tables each empties; their names and signatures are
# stable while phase1 changes inside.
FOLD_FUNCTIONS: dict[str, tuple[str, ...]] = {
    "opskit_fold_user_dashboard_deltas": ("user_dashboard_stats_delta", "project_stats_delta"),
    "opskit_fold_intro_request_deltas": ("intro_request_stats_delta",),
}
# The delta tables churn like a queue: under load the fold deletes thousands of rows a second
# that writers inserted, and autovacuum looks once a minute (autovacuum_naptime). Until a vacuum
# the dead rows' space is not reused, so every insert extends the heap and the heap, its indexes
# and the fold's scan keep growing (small, 32 hot-key writers, 20 s: 85 -> 1,052 heap pages,
# 130k dead rows). So a fold that moved this many rows vacuums its tables (1-14 ms there, and
# the heap stopped growing). TRUNCATE false: truncating the emptied tail takes an exclusive
# lock, and with it a fold run took 5 s.
VACUUM_AFTER_ROWS = 1_000


def fold_pending_deltas(
    conn: psycopg.Connection,
    *,
    budget_s: float = FOLD_BUDGET_S,
    should_stop: Callable[[], bool] = lambda: False,
) -> dict[str, int]:
    """Fold batches of delta rows until none is left or `budget_s` is spent; rows per function.

    `conn` is in autocommit mode: each batch commits on its own. A phase-1 function that does
    not exist (phase1 not applied, or rolled back) is skipped. A fold that finds another fold
    running returns 0 at once (the functions take a try-lock), so concurrent callers are safe.
    """
    folded: dict[str, int] = {}
    deadline = time.monotonic() + budget_s
    for function, delta_tables in FOLD_FUNCTIONS.items():
        if conn.execute("SELECT to_regproc(%s) IS NULL", (function,)).fetchone()[0]:
            continue
        statement = sql.SQL("SELECT {}(%s)").format(sql.Identifier(function))
        folded[function] = 0
        while not should_stop() and time.monotonic() < deadline:
            rows = conn.execute(statement, (FOLD_BATCH_ROWS,)).fetchone()[0]
            folded[function] += rows
            if rows < FOLD_BATCH_ROWS:
                break
        if folded[function] >= VACUUM_AFTER_ROWS:
            # SKIP_LOCKED: never wait behind a migration; a role that may not vacuum gets a
            # warning, not an error.
            conn.execute(
                sql.SQL("VACUUM (SKIP_LOCKED, TRUNCATE false) {}").format(
                    sql.SQL(", ").join(map(sql.Identifier, delta_tables))
                )
            )
    return folded


@contextlib.contextmanager
def folding_in_background(url: str) -> Iterator[None]:
    """Fold every FOLD_INTERVAL_S on a thread of our own while the block runs, as a daemon would."""
    done = threading.Event()

    def fold_until_done() -> None:
        with connect(url, autocommit=True) as conn:
            while not done.wait(FOLD_INTERVAL_S):
                fold_pending_deltas(conn, should_stop=done.is_set)

    folder = threading.Thread(target=fold_until_done, name="opskit-fold", daemon=True)
    folder.start()
    try:
        yield
    finally:
        done.set()
        folder.join()
