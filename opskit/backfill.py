"""`opskit backfill`: recompute the denormalized relations from the truth, batch by batch.

Each batch is one call of the phase-1 function for a range of user ids, in its own transaction,
so writes go on between batches and a batch racing a write neither loses nor double-counts it
(the argument is in migrations/phase1_backfill_data.sql). A batch is idempotent: an interrupted
backfill is resumed by running it again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import psycopg
from psycopg import sql

from opskit.db import connect
from opskit.errors import BadInput, DatabaseError, EnvironmentProblem, first_line

# Relation -> its per-batch backfill function (phase1_backfill_data), the identifier whitelist.
BACKFILL_FUNCTIONS: dict[str, str] = {
    "user_dashboard_stats": "opskit_backfill_user_dashboard_stats",
    "intro_request_stats": "opskit_backfill_intro_request_stats",
    "message_conversations_denorm": "opskit_backfill_message_conversations",
}


@dataclass(frozen=True)
class BackfillResult:
    table: str
    batches: int
    rows_written: int
    seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


def backfill(
    url: str,
    *,
    tables: list[str] | None = None,
    batch_size: int = 5000,
    on_batch: Callable[[str, int, int], None] | None = None,
) -> list[BackfillResult]:
    """Backfill `tables` (default: all three) in batches of `batch_size` user ids.

    `on_batch(table, batches_done, batches_total)` is called after every batch.
    """
    unknown = sorted(set(tables or []) - set(BACKFILL_FUNCTIONS))
    if unknown:
        raise BadInput(
            f"unknown table {', '.join(unknown)}",
            hint=f"choose from: {', '.join(BACKFILL_FUNCTIONS)}",
        )
    if batch_size < 1:
        raise BadInput(f"batch size {batch_size} must be at least 1")
    selected = tables or list(BACKFILL_FUNCTIONS)
    results = []
    with connect(url, autocommit=True) as conn:
        _require_phase1(conn)
        first_id, last_id = conn.execute("SELECT min(id), max(id) FROM users").fetchone()
        for table in selected:
            results.append(_backfill_one(conn, table, first_id, last_id, batch_size, on_batch))
    return results


def _require_phase1(conn: psycopg.Connection) -> None:
    missing = [
        name
        for name in BACKFILL_FUNCTIONS.values()
        if conn.execute("SELECT to_regproc(%s) IS NULL", (name,)).fetchone()[0]
    ]
    if missing:
        raise EnvironmentProblem(
            "the backfill functions are missing: phase1_backfill_data is not applied",
            hint="run `opskit migrate --to phase1_backfill_data` first",
        )


def _backfill_one(
    conn: psycopg.Connection,
    table: str,
    first_id: int | None,
    last_id: int | None,
    batch_size: int,
    on_batch: Callable[[str, int, int], None] | None,
) -> BackfillResult:
    started = time.perf_counter()
    if first_id is None:  # no users, nothing to compute
        return BackfillResult(table, 0, 0, 0.0)
    statement = sql.SQL("SELECT {}(%s, %s)").format(sql.Identifier(BACKFILL_FUNCTIONS[table]))
    total = (last_id - first_id) // batch_size + 1
    written = 0
    for number, lo in enumerate(range(first_id, last_id + 1, batch_size), start=1):
        try:
            written += conn.execute(statement, (lo, lo + batch_size)).fetchone()[0]
        except psycopg.Error as err:
            raise DatabaseError(
                f"backfill of {table} failed at user ids {lo}..{lo + batch_size - 1}: "
                f"{first_line(err)}",
                hint="earlier batches are committed and correct; run the backfill again",
            ) from err
        if on_batch:
            on_batch(table, number, total)
    return BackfillResult(table, total, written, round(time.perf_counter() - started, 3))
