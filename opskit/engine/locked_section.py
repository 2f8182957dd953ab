"""The locked section of a phase script: its strong locks taken up front, under one budget.

The app must never be the one that loses. A script's `LOCK TABLE` statements start its locked
section, which runs to the script's commit: the LOCKs take every lock on an app table the rest
needs (together, parents before children, in the strongest mode needed: `opskit lint` checks
that), then short DDL runs, then the transaction commits. The section's whole run, lock waits
included, is bounded by the phase's lock_timeout, which must be below the server's
deadlock_timeout: each statement gets what is left of that budget as its lock_timeout and
statement_timeout. An app transaction that queues behind the section started waiting after the
section began, so it waits less than deadlock_timeout and its own deadlock check never runs
while it waits for us. When the section and an app transaction wait for each other, the
section's budget runs out first: it rolls back to its savepoint, which releases every lock it
took, and tries again after a jittered backoff, keeping the work done before the section.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import psycopg

from opskit.core.errors import BadInput, ProblemFound
from opskit.engine.phase_files import LOCK_BLOCKS, PhaseFile, lock_statement, section_locks
from opskit.sql import queries

LOCK_SLICES = 5  # the LOCKs of a section wait at most a fifth of its budget before queueing again
# What makes a section give way: it waited too long (lock_timeout, or statement_timeout while
# waiting) or PostgreSQL found it in a deadlock (the budget makes that the migration's own).
_GIVE_WAY = (
    psycopg.errors.LockNotAvailable,
    psycopg.errors.DeadlockDetected,
    psycopg.errors.QueryCanceled,
)


@dataclass(frozen=True)
class LockRecord:
    """How the last run of a phase's locked section went (table opskit_migration_locks)."""

    waited_ms: int  # from the first LOCK attempt until every lock was granted, backoffs included
    held_ms: int  # from the locks granted until the commit released them
    attempts: int
    finished_at: datetime


@dataclass(frozen=True)
class LockGroup:
    """What `migrate --dry-run` says about a pending phase's locks taken together."""

    phase: str
    tables: list[str]
    mode: str
    blocks: str
    last_run: LockRecord | None

    def describe(self) -> str:
        if self.last_run:
            tries = "try" if self.last_run.attempts == 1 else "tries"
            last = (
                f"held {self.last_run.held_ms} ms last time (waited {self.last_run.waited_ms} "
                f"ms, {self.last_run.attempts} {tries})"
            )
        else:
            last = "never run on this database"
        return (
            f"locks taken together: {', '.join(self.tables)} in {self.mode} mode "
            f"(blocks {self.blocks}); {last}"
        )


class SectionFailed(Exception):
    """A statement of the section failed for another reason than its locks."""

    def __init__(self, number: int, error: psycopg.Error) -> None:
        super().__init__(str(error))
        self.number, self.error = number, error


class _BudgetSpent(Exception):
    """The section used up its budget before its last statement."""


def _gave_way(err: Exception) -> bool:
    if isinstance(err, psycopg.errors.QueryCanceled):  # not a cancel by an operator
        return "statement timeout" in str(err)
    return isinstance(err, (*_GIVE_WAY, _BudgetSpent))


def lock_runs(conn: psycopg.Connection, script: str) -> dict[str, LockRecord]:
    """The last run of each phase's locked section (`script` up or down), by phase name."""
    sql = queries("migrations.sql")
    if not conn.execute(sql["lock_runs_exist"]).fetchone()[0]:
        return {}
    return {
        row[0]: LockRecord(*row[1:]) for row in conn.execute(sql["lock_runs"], {"script": script})
    }


def lock_groups(phase: PhaseFile, last_runs: dict[str, LockRecord]) -> list[LockGroup]:
    """The locks a pending phase takes together (none for a phase without a locked section)."""
    locks = section_locks(phase.statements()) if phase.transactional else None
    if locks is None:
        return []
    blocks = LOCK_BLOCKS.get(locks.mode, "nothing the app does")
    return [
        LockGroup(phase.name, list(locks.tables), locks.mode, blocks, last_runs.get(phase.name))
    ]


class LockedSection:
    """Runs the numbered statements of a locked section inside the caller's transaction."""

    def __init__(
        self,
        conn: psycopg.Connection,
        phase: PhaseFile,
        label: str,
        numbered: list[tuple[int, str]],
        *,
        retries: int,
        backoff_s: float,
    ) -> None:
        self.conn, self.phase, self.label = conn, phase, label
        self.numbered, self.retries, self.backoff_s = numbered, retries, backoff_s
        self.locks = section_locks([statement for _, statement in numbered])
        last_lock = max(number for number, s in numbered if lock_statement(s))
        self.lock_statements = [(n, s) for n, s in numbered if n <= last_lock]
        self.other_statements = [(n, s) for n, s in numbered if n > last_lock]
        self.number = numbered[0][0]  # the statement running, for error messages
        self.requeues = 0
        self.attempts = 0
        self.waited_s = 0.0
        self.granted_at = 0.0

    def _budget_ms(self) -> int:
        lock_timeout_ms, deadlock_timeout_ms = self.conn.execute(
            queries("migrations.sql")["lock_limits"]
        ).fetchone()
        if not 0 < lock_timeout_ms < deadlock_timeout_ms:
            raise BadInput(
                f"{self.label}: lock_timeout {lock_timeout_ms} ms is not below the server's "
                f"deadlock_timeout ({deadlock_timeout_ms} ms): PostgreSQL could end an app "
                "transaction to break a deadlock before the migration gives up its locks",
                hint=f"pass --lock-timeout below {deadlock_timeout_ms}ms "
                "(half of it leaves the app a margin)",
            )
        return lock_timeout_ms

    def run(self, statement_finished: Callable[[], None], notice: Callable[[str], None]) -> None:
        budget_ms = self._budget_ms()
        delay = self.backoff_s
        first_try = time.perf_counter()
        while True:
            self.attempts += 1
            try:
                with self.conn.transaction():  # a savepoint: a failed try releases its locks
                    self._run_once(budget_ms, statement_finished)
                break
            except (psycopg.Error, _BudgetSpent) as err:
                if not _gave_way(err):
                    raise self._failure(err) from err
                if self.attempts > self.retries:
                    raise ProblemFound(
                        f"{self.label}: could not take and use its locks on "
                        f"{', '.join(self.locks.tables)} within {budget_ms} ms, "
                        f"{self.attempts} tries in {time.perf_counter() - first_try:.1f} s",
                        hint="find the long transaction holding them (pg_stat_activity); "
                        "retry later or with more --lock-retries",
                    ) from err
                wait = delay * random.uniform(0.5, 1.5)  # jitter: never in step with the app
                notice(
                    f"{self.label}: gave way to the app ({type(err).__name__} at statement "
                    f"{self.number}, budget {budget_ms} ms, {self.requeues} requeues); "
                    f"try {self.attempts + 1} in {wait:.1f} s"
                )
                time.sleep(wait)
                delay = min(delay * 2, 60)
        self.waited_s = self.granted_at - first_try

    def _run_once(self, budget_ms: int, statement_finished: Callable[[], None]) -> None:
        began = time.perf_counter()

        def left_ms() -> int:
            left = budget_ms - round((time.perf_counter() - began) * 1000)
            if left <= 0:
                raise _BudgetSpent()
            return left

        # The LOCKs wait in slices of the budget. A slice that runs out releases every lock taken
        # so far and queues again at once: an app transaction that holds one of our tables and
        # waits for another we hold (its order is not ours) goes on after one slice at most,
        # instead of both waiting until the budget runs out.
        slice_ms = max(budget_ms // LOCK_SLICES, 1)
        while True:
            try:
                with self.conn.transaction():
                    for number, statement in self.lock_statements:
                        self.number = number
                        self._execute(statement, min(slice_ms, left_ms()))
                break
            except (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled) as err:
                if not _gave_way(err):
                    raise
                self.requeues += 1
        self.granted_at = time.perf_counter()
        for _ in self.lock_statements:
            statement_finished()
        if self.other_statements:
            # All in one round trip: with the app's tables locked they rarely wait, and every
            # round trip is time the app waits for us. Each statement may wait at most what is
            # left of the budget now.
            self.number = self.other_statements[0][0]
            self._execute("\n".join(s for _, s in self.other_statements), left_ms())
            for _ in self.other_statements:
                statement_finished()

    def _failure(self, err: psycopg.Error) -> SectionFailed:
        """The failure of the section's statements, with the number of the one that failed:
        found by running them again one by one (the section's savepoint undid the first run)."""
        in_batch = bool(self.other_statements) and self.number == self.other_statements[0][0]
        if not in_batch:
            return SectionFailed(self.number, err)
        try:
            with self.conn.transaction():
                for number, statement in self.lock_statements + self.other_statements:
                    self.number = number
                    self.conn.execute(statement)
                raise _BudgetSpent()  # it went through this time: undo it, report the first error
        except psycopg.Error as again:
            return SectionFailed(self.number, again)
        except _BudgetSpent:
            return SectionFailed(self.other_statements[0][0], err)

    def _execute(self, statement: str, limit_ms: int) -> None:
        # One round trip: the section holds its locks meanwhile. limit_ms is our own integer.
        self.conn.execute(
            f"SET LOCAL lock_timeout = {limit_ms}; SET LOCAL statement_timeout = {limit_ms};\n"
            + statement
        )

    def committed(self, script: str) -> None:
        """Record, once the commit released the locks, how long the section held them."""
        self.conn.execute(
            queries("migrations.sql")["record_lock_run"],
            {
                "phase": self.phase.name,
                "script": script,
                "tables": list(self.locks.tables),
                "mode": self.locks.mode,
                "waited_ms": round(self.waited_s * 1000),
                "held_ms": round((time.perf_counter() - self.granted_at) * 1000),
                "attempts": self.attempts,
            },
        )
