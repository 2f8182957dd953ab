"""Migrate, roll back to base and migrate again while the app writes: what the app saw.

Writer threads (opskit.workload, each with its own connection) run every write path of the app
(votes, flips, comments, follows, messages, reads, intros, answers, soft deletes, transfers, hard
deletes) on a sample of existing users and projects, hot and spread keys alike, for the
whole run. Meanwhile the steps run one after the other. Every app operation is timed from its
start to its end (deadlock retries included, though there must be none), and the timings are
grouped by the migration phase that was running when the operation started, so each phase shows
what it cost the app (p99 and max). At the end the denormalized relations are compared with the
truth (`opskit verify`).
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import psycopg

from opskit.benchmarking.workload import APP_OPS, OPERATIONS, Writers, world_from_database
from opskit.core.db import connect
from opskit.core.errors import OpskitError
from opskit.engine import migrations
from opskit.engine.verify import verify

# (label, verb, target) of each step, in order.
STEPS: tuple[tuple[str, str, str | None], ...] = (
    ("migrate", "migrate", None),
    ("rollback --to base", "rollback", migrations.BASE),
    ("migrate again", "migrate", None),
)
WORLD_USERS = 400
WORLD_PROJECTS = 60
# The slow app transaction: a read, then writes to child tables, then to a parent (the opposite
# of the migration's lock order), pausing between statements with its locks held (idle in
# transaction), as a slow app server does, and between transactions (its next request). Inserts
# only, in one order for every thread: app transactions never deadlock among themselves, so
# every deadlock would be the migration's.
SLOW_TRANSACTION = ("read_hot_votes", "follow", "comment", "message", "new_project")
SLOW_PAUSE_S = (0.005, 0.05)
SLOW_THINK_S = (0.05, 0.25)


@dataclass(frozen=True)
class Window:
    """App operations that started while one phase (or nothing: `idle`) was running."""

    step: str
    phase: str
    seconds: float
    operations: int
    p99_ms: float | None
    max_ms: float | None
    slowest: str | None  # the write path of the slowest operation


@dataclass
class StepOutcome:
    step: str
    seconds: float
    retries: list[str] = field(default_factory=list)  # the runner's notices: lock conflicts
    error: str | None = None  # the step failed (the later steps did not run)
    windows: list[Window] = field(default_factory=list)


@dataclass
class LiveMigrationResult:
    writers: int
    steps: list[StepOutcome]
    idle_window: Window | None  # the app's latency before the first step: its baseline
    app_commits: int = 0
    app_rejected: int = 0  # expected refusals (a row deleted meanwhile), not failures
    deadlocks: int = 0
    deadlock_details: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    operations: dict[str, int] = field(default_factory=dict)  # committed, by write path
    drift: list[str] = field(default_factory=list)  # verify checks that failed

    @property
    def app_failures(self) -> int:
        return self.deadlocks + len(self.errors)

    def as_dict(self) -> dict:
        return {**asdict(self), "app_failures": self.app_failures}


class _Timeline:
    """Progress receiver that notes when each phase (or down script) started, and the notices."""

    def __init__(self) -> None:
        self.starts: list[tuple[str, float]] = []
        self.notices: list[str] = []

    def phase_started(self, phase: str, statements: int) -> None:
        if not self.starts or self.starts[-1][0] != phase:  # a retry restarts the same phase
            self.starts.append((phase, time.monotonic()))

    def statement_finished(self, phase: str) -> None:
        pass

    def index_build(self, index: str, blocks_done: int, blocks_total: int) -> None:
        pass

    def notice(self, message: str) -> None:
        self.notices.append(message)


def _percentile(sorted_values: Sequence[float], share: float) -> float:
    """Nearest-rank percentile of sorted values."""
    rank = max(1, round(share * len(sorted_values) + 0.5))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def window(
    step: str, phase: str, start: float, end: float, timings: Sequence[tuple[float, float, str]]
) -> Window:
    inside = sorted((took, name) for began, took, name in timings if start <= began < end)
    seconds = [took for took, _ in inside]
    return Window(
        step,
        phase,
        round(end - start, 3),
        len(seconds),
        round(_percentile(seconds, 0.99) * 1000, 1) if seconds else None,
        round(seconds[-1] * 1000, 1) if seconds else None,
        inside[-1][1] if inside else None,
    )


class _SlowWriters(Writers):
    """Writers whose every operation is SLOW_TRANSACTION, paused between its statements."""

    def __init__(self, url: str, world, threads: int, seed: int) -> None:
        super().__init__(url, world, threads, None, seed, ops=["slow_transaction"])
        self.pauses = random.Random(seed)

    def _attempt_with_retries(self, conn, name, params, rollback) -> bool:
        try:
            with conn.transaction():
                for part in SLOW_TRANSACTION:
                    conn.execute(_SLOW_SQL.get(part) or OPERATIONS[part], params)
                    time.sleep(self.pauses.uniform(*SLOW_PAUSE_S))
        except psycopg.errors.DeadlockDetected as err:
            self._count_deadlock(err)
            return True
        with self.lock:
            self.committed += 1
            self.ops_done[name] += 1
        return True

    def _attempt(self, conn, name, params, rollback) -> bool:
        done = super()._attempt(conn, name, params, rollback)
        time.sleep(self.pauses.uniform(*SLOW_THINK_S))  # not timed: before the next request
        return done


_SLOW_SQL = {"read_hot_votes": "SELECT count(*) FROM votes WHERE project_id = %(hot)s"}


def _run_step(url: str, verb: str, target: str | None, timeouts: migrations.Timeouts, timeline):
    if verb == "migrate":
        migrations.migrate(url, to=target, timeouts=timeouts, progress=timeline)
    else:
        migrations.rollback(url, to=target, timeouts=timeouts, progress=timeline)


def run(
    url: str,
    *,
    writers: int = 8,
    slow_writers: int = 1,
    seed: int = 1,
    settle_s: float = 2.0,
    timeouts: migrations.Timeouts | None = None,
    steps: Sequence[tuple[str, str, str | None]] = STEPS,
) -> LiveMigrationResult:
    """Run `steps` on the database at `url` (seeded, at base) under `writers` app writers.

    `slow_writers` more threads run SLOW_TRANSACTION over and over. With writers=0 and
    slow_writers=0 the same steps run on an idle database: the migration's own baseline time.
    `settle_s` of load come before the first step (the app's idle latency) and between steps.
    """
    timeouts = timeouts or migrations.Timeouts()
    with connect(url, autocommit=True) as conn:
        world = world_from_database(conn, WORLD_USERS, WORLD_PROJECTS, seed)
    load = Writers(url, world, writers, None, seed, ops=APP_OPS)
    slow = _SlowWriters(url, world, slow_writers, seed + 1000)
    outcomes: list[StepOutcome] = []
    idle_window = None
    with load, slow:
        began = time.monotonic()
        if writers or slow_writers:
            time.sleep(settle_s)
            idle_window = window(
                "before", "idle", began, time.monotonic(), load.timings + slow.timings
            )
        for label, verb, target in steps:
            timeline = _Timeline()
            started = time.monotonic()
            error = None
            try:
                _run_step(url, verb, target, timeouts, timeline)
            except OpskitError as err:
                error = err.message
            ended = time.monotonic()
            outcome = StepOutcome(label, round(ended - started, 3), timeline.notices, error=error)
            bounds = [*timeline.starts, ("", ended)]
            timings = load.timings + slow.timings
            for (phase, start), (_, end) in zip(bounds, bounds[1:], strict=False):
                outcome.windows.append(window(label, phase, start, end, timings))
            outcomes.append(outcome)
            if error:
                break
            if writers or slow_writers:
                time.sleep(settle_s)
    result = LiveMigrationResult(writers + slow_writers, outcomes, idle_window)
    result.app_commits = load.committed + slow.committed
    result.app_rejected = load.rejected
    result.deadlocks = load.deadlocks + slow.deadlocks
    result.deadlock_details = load.deadlock_details + slow.deadlock_details
    result.errors = load.errors + slow.errors
    result.operations = dict(sorted((load.ops_done + slow.ops_done).items()))
    with connect(url, autocommit=True) as conn:
        report = verify(conn)  # checks what the applied phases made, whichever they are
    result.drift = [f"{c.name}: {c.detail}" for c in report.checks if not c.ok]
    return result
