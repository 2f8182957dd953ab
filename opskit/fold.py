"""Fold phase1's pending delta rows into their base rows: the daemon's fold job, and the fold
that `opskit bench-writes` runs beside its writers as the daemon would."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

import psycopg
from psycopg import sql

from opskit.db import connect

FOLD_INTERVAL_S = 1.0  # how often the daemon folds
FOLD_BATCH_ROWS = 10_000
FOLD_BUDGET_S = 2.0  # one fold run stops after this long; the next run goes on
# The phase-1 functions (max_rows integer) that move delta rows into the base rows and return
# how many they moved; their names and signatures are stable while phase1 changes inside.
FOLD_FUNCTIONS = ("opskit_fold_user_dashboard_deltas", "opskit_fold_intro_request_deltas")


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
    for function in FOLD_FUNCTIONS:
        if conn.execute("SELECT to_regproc(%s) IS NULL", (function,)).fetchone()[0]:
            continue
        statement = sql.SQL("SELECT {}(%s)").format(sql.Identifier(function))
        folded[function] = 0
        while not should_stop() and time.monotonic() < deadline:
            rows = conn.execute(statement, (FOLD_BATCH_ROWS,)).fetchone()[0]
            folded[function] += rows
            if rows < FOLD_BATCH_ROWS:
                break
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
