"""`opskit backfill`: recompute the denormalized relations from the truth, batch by batch.

Each batch is one call of a phase-1 function for a range of user (or, for the per-project
counts of user_dashboard_stats, project) ids, in its own transaction,
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

from opskit.core.db import connect
from opskit.core.errors import BadInput, DatabaseError, EnvironmentProblem, first_line
from opskit.engine.refresh import note_owners_changed


@dataclass(frozen=True)
class BatchStep:
    """A per-batch backfill function of phase1_backfill_data and the table whose ids it covers."""

    function: str
    id_table: str


# Relation -> its per-batch steps, in order; also the identifier whitelist. user_dashboard_stats
# reads per-project counts (project_stats, batches of project ids: every project, whoever owns
# it meanwhile) and per-user columns (batches of user ids).
BACKFILL_STEPS: dict[str, tuple[BatchStep, ...]] = {
    "user_dashboard_stats": (
        BatchStep("opskit_backfill_project_stats", "projects"),
        BatchStep("opskit_backfill_user_columns", "users"),
    ),
    "intro_request_stats": (BatchStep("opskit_backfill_intro_request_stats", "users"),),
    "message_conversations_denorm": (BatchStep("opskit_backfill_message_conversations", "users"),),
}

# Relation -> the function that makes its rows of users lo <= id < hi equal the truth in one
# call (a targeted repair of drifted users, `opskit reconcile --fix`).
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


ANALYZE_BACKFILLED_TABLES = (
    "ANALYZE user_dashboard_stats_base, project_stats_base, intro_request_stats_base, "
    "message_conversations_denorm"
)


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
    unknown = sorted(set(tables or []) - set(BACKFILL_STEPS))
    if unknown:
        raise BadInput(
            f"unknown table {', '.join(unknown)}",
            hint=f"choose from: {', '.join(BACKFILL_STEPS)}",
        )
    if batch_size < 1:
        raise BadInput(f"batch size {batch_size} must be at least 1")
    selected = tables or list(BACKFILL_STEPS)
    results = []
    with connect(url, autocommit=True) as conn:
        _require_phase1(conn)
        id_ranges = {
            table: conn.execute(
                sql.SQL("SELECT min(id), max(id) FROM {}").format(sql.Identifier(table))
            ).fetchone()
            for table in {step.id_table for steps in BACKFILL_STEPS.values() for step in steps}
        }
        for table in selected:
            results.append(_backfill_one(conn, table, id_ranges, batch_size, on_batch))
        if "user_dashboard_stats" in selected:
            note_owners_changed(conn, None)
        conn.execute(ANALYZE_BACKFILLED_TABLES)  # the rows were all rewritten: fresh statistics
    return results


def _require_phase1(conn: psycopg.Connection) -> None:
    functions = {step.function for steps in BACKFILL_STEPS.values() for step in steps}
    missing = [
        name
        for name in sorted(functions | set(BACKFILL_FUNCTIONS.values()))
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
    id_ranges: dict[str, tuple[int | None, int | None]],
    batch_size: int,
    on_batch: Callable[[str, int, int], None] | None,
) -> BackfillResult:
    started = time.perf_counter()
    batches = [
        (step.function, lo)
        for step in BACKFILL_STEPS[table]
        for first_id, last_id in [id_ranges[step.id_table]]
        if first_id is not None  # no rows, nothing to compute
        for lo in range(first_id, last_id + 1, batch_size)
    ]
    written = 0
    for number, (function, lo) in enumerate(batches, start=1):
        statement = sql.SQL("SELECT {}(%s, %s)").format(sql.Identifier(function))
        try:
            written += conn.execute(statement, (lo, lo + batch_size)).fetchone()[0]
        except psycopg.Error as err:
            raise DatabaseError(
                f"backfill of {table} failed in {function} at ids {lo}..{lo + batch_size - 1}: "
                f"{first_line(err)}",
                hint="earlier batches are committed and correct; run the backfill again",
            ) from err
        if on_batch:
            on_batch(table, number, len(batches))
    return BackfillResult(table, len(batches), written, round(time.perf_counter() - started, 3))
