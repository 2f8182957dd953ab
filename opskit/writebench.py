"""`opskit bench-writes`: what the triggers cost the app's hottest write, votes.

Many writer threads, each on its own connection, insert, flip and delete votes for a while, on
keys spread over all projects or on one hot project. The same load runs on a database without
opskit's phases and on a clone with all of them applied, so the difference is the triggers' cost.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import asdict, dataclass

import numpy as np
import psycopg
from psycopg import sql

from opskit import migrations, seed
from opskit.db import connect
from opskit.errors import DatabaseError, ProblemFound
from opskit.sql import queries


@dataclass(frozen=True)
class WriteLoad:
    writers: int = 32
    seconds: float = 20.0
    hot: bool = False
    seed: int = 1


@dataclass(frozen=True)
class WriteBenchResult:
    label: str
    hot: bool
    writers: int
    seconds: float
    transactions: int
    tps: float
    p50_ms: float
    p99_ms: float
    deadlocks: int
    other_errors: int
    wal_bytes_per_write: float

    def as_dict(self) -> dict:
        return asdict(self)


def run_vote_writes(url: str, load: WriteLoad, label: str) -> WriteBenchResult:
    """Drive vote writes on `url` and measure throughput, latency, deadlocks and WAL."""
    bench_sql = queries("writebench.sql")
    with connect(url, autocommit=True) as conn:
        n_users, hot_project, project_ids = _targets(conn, bench_sql)
        wal_start = conn.execute(bench_sql["wal_lsn"]).fetchone()[0]

    latencies: list[list[float]] = [[] for _ in range(load.writers)]
    deadlocks = [0] * load.writers
    errors = [0] * load.writers
    stop_at = time.monotonic() + load.seconds
    start_barrier = threading.Barrier(load.writers)

    def writer(slot: int) -> None:
        rng = random.Random(load.seed * 1_000 + slot)
        with connect(url, autocommit=True) as conn:
            start_barrier.wait()
            while time.monotonic() < stop_at:
                user_id = rng.randint(1, n_users)
                project_id = hot_project if load.hot else rng.choice(project_ids)
                draw = rng.random()
                started = time.perf_counter()
                try:
                    if draw < 0.25:
                        conn.execute(bench_sql["delete_vote"], (user_id, project_id))
                    else:
                        vote_type = "up" if draw < 0.85 else "down"
                        conn.execute(bench_sql["upsert_vote"], (user_id, project_id, vote_type))
                except psycopg.errors.DeadlockDetected:
                    deadlocks[slot] += 1
                    continue
                except psycopg.Error:
                    errors[slot] += 1
                    continue
                latencies[slot].append(time.perf_counter() - started)

    threads = [threading.Thread(target=writer, args=(i,), daemon=True) for i in range(load.writers)]
    begun = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - begun

    with connect(url, autocommit=True) as conn:
        wal_bytes = conn.execute(bench_sql["wal_bytes_since"], (wal_start,)).fetchone()[0]
    all_latencies = np.array([value for slot in latencies for value in slot]) * 1000
    count = len(all_latencies)
    return WriteBenchResult(
        label=label,
        hot=load.hot,
        writers=load.writers,
        seconds=round(elapsed, 2),
        transactions=count,
        tps=round(count / elapsed, 1) if elapsed else 0.0,
        p50_ms=round(float(np.percentile(all_latencies, 50)), 3) if count else 0.0,
        p99_ms=round(float(np.percentile(all_latencies, 99)), 3) if count else 0.0,
        deadlocks=sum(deadlocks),
        other_errors=sum(errors),
        wal_bytes_per_write=round(float(wal_bytes) / count, 1) if count else 0.0,
    )


def _targets(conn: psycopg.Connection, bench_sql: dict) -> tuple[int, int, list[int]]:
    n_users = conn.execute(bench_sql["max_user_id"]).fetchone()[0]
    hot_project = conn.execute(bench_sql["hottest_project"]).fetchone()
    project_ids = [row[0] for row in conn.execute(bench_sql["live_projects"])]
    if not n_users or hot_project is None or not project_ids:
        raise ProblemFound(
            "the database has no users or live projects to vote on",
            hint="seed it first: `opskit seed --scale small`",
        )
    return n_users, hot_project[0], project_ids


def compare_vote_writes(
    url: str, load: WriteLoad, *, scale: str = "small", progress=None
) -> list[WriteBenchResult]:
    """The vote load on two scratch databases of `url`'s server: without phases, then with all.

    Both are made here (seeded `scale`, the second a clone with every phase applied) and dropped
    at the end, so the operator's own database is never written to.
    """
    note = progress or (lambda message: None)
    suffix = f"{int(time.time())}_{random.randint(0, 9999)}"
    plain, phased = f"opskit_benchw_plain_{suffix}", f"opskit_benchw_phases_{suffix}"
    plain_url = psycopg.conninfo.make_conninfo(url, dbname=plain)
    phased_url = psycopg.conninfo.make_conninfo(url, dbname=phased)
    with connect(url, autocommit=True) as admin:
        try:
            note(f"seeding {scale} into {plain}")
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(plain)))
            seed.seed_database(plain_url, scale, load.seed)
            admin.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(phased), sql.Identifier(plain)
                )
            )
            note(f"applying every phase to {phased}")
            migrations.migrate(phased_url)
            results = []
            for label, target in (("no phases", plain_url), ("all phases", phased_url)):
                note(
                    f"{load.writers} writers for {load.seconds:.0f} s on {label}"
                    f" ({'one hot project' if load.hot else 'spread keys'})"
                )
                results.append(run_vote_writes(target, load, label))
            return results
        except psycopg.Error as err:
            raise DatabaseError(f"write benchmark failed: {err}") from err
        finally:
            for name in (phased, plain):
                admin.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
