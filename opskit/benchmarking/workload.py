"""The app's write paths (docs/interface.md §5), run at random from many connections at once.

`opskit soak` and the exactness tests (tests/integration/test_phase1_exactness.py) share these
operations: single statements of opskit/sql/workload.sql, a multi-statement transaction, their
random parameters over a `World` of users and projects, and `Writers`, threads that each run
them on their own connection and count what happened.
"""

from __future__ import annotations

import collections
import itertools
import random
import re
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg

from opskit.sql import queries

OPERATIONS: dict[str, str] = queries("workload.sql")
# Multi-statement transactions. Only inserts before the message: a transaction that flips or
# deletes a vote and then inserts a vote or comment on the same project can deadlock with a
# concurrent soft delete of that project (phase1 section 3).
TRANSACTIONS: dict[str, tuple[str, ...]] = {
    "vote_comment_message": ("vote_hot_new", "comment", "message")
}
# Statements the app never issues and that can deadlock (never corrupt) against a concurrent
# soft delete / owner move of the same project (phase1 section 3): moving votes or comments to
# another project or user (the move holds the row while it waits for the target project or for
# a concurrent insert of the same key), and multi-row UPDATEs of one project's votes or
# comments (they lock those rows in their scan order, the project trigger in its own).
# App workloads (`admin=False`) leave them out.
NOT_APP = frozenset({"move_vote", "give_vote", "move_comment", "flip_all", "edit_comments"})
WEIGHTS = {"vote_hot": 6, "unvote_hot": 3, "vote": 3, "message": 3, "flip": 2, "read": 2}
OP_NAMES = sorted(OPERATIONS) + sorted(TRANSACTIONS)
# Every write path of the app (docs/interface.md §5) and nothing else: no admin statement, no
# fold (the daemon's job, and a function only phase 1 creates).
FOLDS = ("fold_dashboard", "fold_intros")
APP_OPS = tuple(name for name in OP_NAMES if name not in NOT_APP and name not in FOLDS)
EXPECTED_ERRORS = (
    psycopg.errors.ForeignKeyViolation,  # the project or user was deleted meanwhile
    psycopg.errors.UniqueViolation,  # a moved vote meets an existing one
)
RETRIES = 10  # attempts of one operation aborted by a deadlock or a serialization failure
WRITER_APPLICATION_NAME = "opskit-soak-writer"  # what the termination fault looks for


@dataclass(frozen=True)
class World:
    """The users and projects operations pick from; `projects[0]` is the hot project.

    Rows with ids above the `last_base_*` ids were created by the workload, which alone may
    hard-delete them (`delete_user`, `drop_project`).
    """

    users: tuple[int, ...]
    projects: tuple[int, ...]
    last_base_user: int
    last_base_project: int

    @property
    def hot_project(self) -> int:
        return self.projects[0]


def add_users(conn: psycopg.Connection, n: int, role: str = "builder") -> list[int]:
    ids = []
    for _ in range(n):
        name = uuid.uuid4().hex[:12]
        ids.append(
            conn.execute(
                "INSERT INTO users (username, display_name, email, role)"
                " VALUES (%s, %s, %s, %s) RETURNING id",
                (name, name.upper(), f"{name}@example.com", role),
            ).fetchone()[0]
        )
    return ids


def add_projects(conn: psycopg.Connection, owners: list[int]) -> list[int]:
    return [
        conn.execute(
            "INSERT INTO projects (owner_id, title) VALUES (%s, %s) RETURNING id",
            (owner, f"project of {owner}"),
        ).fetchone()[0]
        for owner in owners
    ]


def make_world(conn: psycopg.Connection, users: int = 6, projects: int = 4) -> World:
    """New users and projects (owned by the first three users): a small, contended world."""
    uids = add_users(conn, users)
    pids = add_projects(conn, [uids[i % 3] for i in range(projects)])
    return World(tuple(uids), tuple(pids), max(uids), max(pids))


def world_from_database(conn: psycopg.Connection, users: int, projects: int, seed: int) -> World:
    """A sample of the existing users and live projects; the most voted project is the hot one."""
    sample = queries("workload_world.sql")
    uids = [row[0] for row in conn.execute(sample["sample_users"], {"n": users, "seed": seed})]
    pids = [
        row[0] for row in conn.execute(sample["sample_projects"], {"n": projects, "seed": seed})
    ]
    last_user, last_project = conn.execute(sample["last_ids"]).fetchone()
    if len(uids) < 2 or len(pids) < 2:
        raise ValueError("the database needs at least 2 users and 2 live projects")
    return World(tuple(uids), tuple(pids), last_user, last_project)


def op_params(rng: random.Random, world: World) -> dict:
    a, b = rng.sample(world.users, 2)
    p, p2 = rng.sample(world.projects, 2)
    return {
        "a": a,
        "b": b,
        "p": p,
        "p2": p2,
        "hot": world.hot_project,
        "t": rng.choice(["up", "down"]),
        "k": rng.randrange(1, 20),
        "body": "b" * rng.randrange(1, 130) + str(rng.randrange(1000)),
        "answer": rng.choice(["accepted", "declined"]),
        "name": uuid.uuid4().hex[:16],
        "last_base_user": world.last_base_user,
        "last_base_project": world.last_base_project,
    }


def run_op(conn: psycopg.Connection, name: str, params: dict, *, rollback: bool = False) -> None:
    """One operation in one transaction (a savepoint inside an open one); `rollback` undoes it."""
    with conn.transaction(force_rollback=rollback):
        for part in TRANSACTIONS.get(name, (name,)):
            conn.execute(OPERATIONS[part], params)


class Writers:
    """N threads, each with its own connection, running random operations; a context manager.

    Each thread runs `ops_each` operations, or until `stop` is set when None. A deadlock or a
    serialization failure is counted and retried; an expected error (a row deleted meanwhile)
    counts as rejected. `rollback_share` of the operations roll back on purpose. With
    `reconnect`, a connection the server closed (a terminated backend) is counted and replaced,
    and the operation's outcome is unknown; without it, that is an error like any other.
    `ops` limits the operations to those names (default: the app's, plus the admin ones with
    `admin`). `timings` holds (start, seconds, name) of every operation, retries included: what
    the app's request waited.
    """

    def __init__(
        self,
        url: str,
        world: World,
        threads: int,
        ops_each: int | None,
        seed: int,
        *,
        folder: bool = False,
        admin: bool = False,
        rollback_share: float = 0.0,
        reconnect: bool = False,
        ops: Sequence[str] | None = None,
    ) -> None:
        self.url, self.world = url, world
        chosen = ops if ops is not None else [n for n in OP_NAMES if admin or n not in NOT_APP]
        self.names = [n for n in chosen for _ in range(WEIGHTS.get(n, 1))]
        self.rollback_share = rollback_share
        self.reconnect = reconnect
        self.committed = 0
        self.rolled_back = 0
        self.rejected = 0  # expected errors (FK / unique violations)
        self.deadlocks = 0
        self.deadlock_details: list[str] = []
        self.connections_lost = 0
        self.errors: list[str] = []
        self.timings: list[tuple[float, float, str]] = []  # (monotonic start, seconds, name)
        self.ops_done: collections.Counter[str] = collections.Counter()  # committed, by name
        self.running: dict[int, str] = {}  # backend pid -> operation, to explain deadlocks
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._run, args=(seed + i, ops_each), daemon=True)
            for i in range(threads)
        ]
        if folder:
            self.threads.append(threading.Thread(target=self._fold, daemon=True))

    def _connect(self) -> psycopg.Connection:
        return psycopg.connect(self.url, autocommit=True, application_name=WRITER_APPLICATION_NAME)

    def _fold(self) -> None:
        """Fold the phase-1 deltas continuously (small batches) until stopped."""
        try:
            with self._connect() as conn:
                while not self.stop.is_set():
                    for fold in FOLDS:  # autocommit: each its own transaction
                        conn.execute(OPERATIONS[fold], {"k": 5})
                    time.sleep(0.002)
        except Exception as err:  # noqa: BLE001 - reported to the caller
            with self.lock:
                self.errors.append(f"fold: {type(err).__name__}: {err}")

    def _run(self, seed: int, count: int | None) -> None:
        rng = random.Random(seed)
        conn: psycopg.Connection | None = None
        try:
            for _ in itertools.repeat(None) if count is None else range(count):
                if self.stop.is_set():
                    return
                name = rng.choice(self.names)
                params = op_params(rng, self.world)
                rollback = rng.random() < self.rollback_share
                if conn is None:
                    conn = self._connect()
                if not self._attempt(conn, name, params, rollback):
                    conn.close()
                    conn = None
        except Exception as err:  # noqa: BLE001 - reported to the caller
            with self.lock:
                self.errors.append(f"{type(err).__name__}: {str(err).strip()[:300]}")
        finally:
            if conn is not None:
                conn.close()

    def _attempt(self, conn: psycopg.Connection, name: str, params: dict, rollback: bool) -> bool:
        """Run one operation with retries; False when the server closed the connection."""
        self.running[conn.info.backend_pid] = name
        started = time.monotonic()
        try:
            return self._attempt_with_retries(conn, name, params, rollback)
        finally:
            self.timings.append((started, time.monotonic() - started, name))

    def _attempt_with_retries(
        self, conn: psycopg.Connection, name: str, params: dict, rollback: bool
    ) -> bool:
        for _attempt in range(RETRIES):
            try:
                run_op(conn, name, params, rollback=rollback)
            except psycopg.errors.DeadlockDetected as err:
                self._count_deadlock(err)
                continue
            except psycopg.errors.SerializationFailure:
                continue
            except EXPECTED_ERRORS:
                with self.lock:
                    self.rejected += 1
                return True
            except psycopg.OperationalError:
                if not (self.reconnect and conn.broken):
                    raise
                with self.lock:
                    self.connections_lost += 1
                return False
            with self.lock:
                if rollback:
                    self.rolled_back += 1
                else:
                    self.committed += 1
                    self.ops_done[name] += 1
            return True
        return True

    def _count_deadlock(self, err: psycopg.errors.DeadlockDetected) -> None:
        detail = re.sub(
            r"Process (\d+)",
            lambda m: f"{self.running.get(int(m.group(1)), 'not a writer')}({m.group(1)})",
            " ".join((err.diag.message_detail or "").split()),
        )
        with self.lock:
            self.deadlocks += 1
            self.deadlock_details.append(detail)

    def __enter__(self) -> Writers:
        for thread in self.threads:
            thread.start()
        return self

    def join(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.1, deadline - time.monotonic()))
        if any(thread.is_alive() for thread in self.threads):
            raise TimeoutError(f"writers still running after {timeout:.0f} s")

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.join()
