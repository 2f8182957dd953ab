"""`opskit reconcile`: prove Redis and the denormalized relations equal the truth; repair them.

Checks: each denormalized relation of docs/interface.md §6 against its truth query (a full outer
join per relation, opskit.engine.truth; the three run at once on their own connections, in one
exported REPEATABLE READ snapshot); every cached Redis vote set against the votes table (SCAN,
then one query per batch of users); each view's oldest change not applied yet against the freshness
promise (refresh.FRESHNESS_MAX_S + one poll).

--fix repairs with the phase-1 backfill functions (idempotent, safe while writes go on) over
the drifted users only, rebuilds drifted Redis keys, applies overdue views' changes, then re-checks
what it repaired. Every run is recorded in opskit_reconcile_runs.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import psycopg
import redis
from psycopg import sql

from opskit.core.db import connect, redis_client
from opskit.core.errors import EnvironmentProblem
from opskit.core.settings import Settings
from opskit.engine import votecache
from opskit.engine.backfill import BACKFILL_STEPS
from opskit.engine.refresh import (
    FRESHNESS_MAX_S,
    known_views,
    note_owners_changed,
    refresh,
    route_changes,
    worker_id,
)
from opskit.engine.truth import DENORMALIZED, Denormalized, Diff, diff_against_truth
from opskit.sql import queries

REPAIR_BATCH_IDS = 5000  # ids per backfill call when repairing (the backfill's batch size)
# The table a backfill step batches over -> the query (reconcile.sql) giving the ids to recompute
# for a set of drifted users.
REPAIR_IDS = {"users": "user_ids_only", "projects": "project_ids_of_owners"}
REDIS_CHECK = "redis_upvotes"
VIEWS_CHECK = "view_freshness"


@dataclass
class Check:
    name: str
    rows_checked: int
    drift: int
    fixed: int = 0
    remaining: int | None = None  # drift a re-check still found after --fix
    sample: list[str] = field(default_factory=list)  # the first drifted keys
    seconds: float = 0.0
    source_rows: int | None = None  # denormalized relations: app rows their truth counted


@dataclass
class ReconcileReport:
    checks: list[Check]
    fix: bool
    seconds: float
    truth_rows_per_s: int | None  # denormalized truth rows compared per second
    source_rows: int | None  # app rows the truths counted (each relation counts its own)
    source_rows_per_s: int | None  # ... per second
    relations_seconds: float | None  # wall time of the relations' diffs (run at once)
    run_id: int | None = None
    changed: bool = False  # `--changed`: only the keys touched since the last check
    keys_checked: int | None = None  # `--changed`: the touched keys it took

    @property
    def drift_total(self) -> int:
        return sum(check.drift for check in self.checks)

    def as_dict(self) -> dict:
        return {
            "drift_total": self.drift_total,
            "checks": [asdict(check) for check in self.checks],
            "fix": self.fix,
            "seconds": self.seconds,
            "truth_rows_per_s": self.truth_rows_per_s,
            "source_rows": self.source_rows,
            "source_rows_per_s": self.source_rows_per_s,
            "relations_seconds": self.relations_seconds,
            "run_id": self.run_id,
            "changed": self.changed,
            "keys_checked": self.keys_checked,
        }


def reconcile(
    settings: Settings, url: str, redis_url: str, *, fix: bool = False
) -> ReconcileReport:
    """Run every check (and the repairs with `fix`); record the run; return the figures."""
    started_at = dt.datetime.now(dt.UTC)
    started = time.perf_counter()
    with redis_client(redis_url) as client, connect(url, autocommit=True) as conn:
        relations = [spec for spec in DENORMALIZED if _exists(conn, spec.relation)]
        has_queue = _exists(conn, "mv_refresh_queue")
        if not relations and not has_queue:
            raise EnvironmentProblem(
                "nothing to reconcile: no denormalized relation and no refresh queue",
                hint="run `opskit migrate` first",
            )
        conn.execute(queries("reconcile.sql")["create_tables"])

        checks, diff_seconds = check_denormalized(url, relations, fix=fix)
        truth_rows = sum(check.rows_checked for check in checks)
        source_rows = sum(check.source_rows for check in checks)
        checks.append(check_redis(client, conn, settings.redis_prefix, fix=fix))
        if has_queue:
            checks.append(check_views(conn, url, settings, fix=fix))

        diff_seconds = max(round(diff_seconds, 3), 0.001)  # the rates match the figure shown
        report = ReconcileReport(
            checks=checks,
            fix=fix,
            seconds=round(time.perf_counter() - started, 3),
            truth_rows_per_s=round(truth_rows / diff_seconds) if truth_rows else None,
            source_rows=source_rows if relations else None,
            source_rows_per_s=round(source_rows / diff_seconds) if source_rows else None,
            relations_seconds=diff_seconds if relations else None,
        )
        report.run_id = record_run(conn, report, started_at)
    return report


def _exists(conn: psycopg.Connection, name: str) -> bool:
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()[0]


# ---------------------------------------------------------------------------- denormalized


def check_denormalized(
    url: str, relations: list[Denormalized], *, fix: bool
) -> tuple[list[Check], float]:
    """Diff every relation against its truth; with `fix`, repair the drifted users and re-check.

    The diffs run at once, one connection per relation, all in one snapshot (exported by a
    REPEATABLE READ transaction and imported by the others). Returns the checks and the wall
    time of the diffs (not of the repairs).
    """
    started = time.perf_counter()
    with connect(url) as leader:
        leader.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        snapshot = leader.execute("SELECT pg_export_snapshot()").fetchone()[0]
        with ThreadPoolExecutor(max(len(relations), 1)) as pool:
            diffs = list(
                pool.map(lambda spec: _diff_in_snapshot(url, snapshot, spec, fix), relations)
            )
        leader.rollback()
    diff_seconds = time.perf_counter() - started
    checks = []
    for spec, (diff, seconds) in zip(relations, diffs, strict=True):
        check = Check(
            spec.relation,
            diff.rows_compared,
            diff.differing,
            sample=diff.first_keys[:5],
            seconds=seconds,
            source_rows=diff.source_rows,
        )
        if fix and diff.differing:
            with connect(url, autocommit=True) as conn:
                repair_relation(conn, spec, [int(key.split(",")[0]) for key in diff.first_keys])
                check.remaining = diff_against_truth(conn, spec).differing
            check.fixed = max(check.drift - check.remaining, 0)
        checks.append(check)
    return checks, diff_seconds


def _diff_in_snapshot(
    url: str, snapshot: str, spec: Denormalized, every_key: bool
) -> tuple[Diff, float]:
    """One relation's diff in the exported snapshot; every differing key when `every_key`."""
    started = time.perf_counter()
    with connect(url) as conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
        diff = diff_against_truth(conn, spec, sample=None if every_key else 5)
        conn.rollback()
    return diff, round(time.perf_counter() - started, 3)


def repair_relation(conn: psycopg.Connection, spec: Denormalized, user_ids: list[int]) -> None:
    """Recompute the drifted users' rows with the phase-1 backfill steps, range by range.

    A step makes relation == truth for every id in [lo, hi) whatever the rows held, safely while
    writes go on (migrations/phase1_backfill_data.sql); a delta relation is fixed by rewriting
    its *_base rows. A step over projects covers the drifted users' projects. Each call is its
    own READ COMMITTED transaction.
    """
    for step in BACKFILL_STEPS.get(spec.relation, ()):
        ids_of = REPAIR_IDS[step.id_table]
        ids = [
            row[0] for row in conn.execute(queries("reconcile.sql")[ids_of], {"user_ids": user_ids})
        ]
        statement = sql.SQL("SELECT {}(%s, %s)").format(sql.Identifier(step.function))
        for lo, hi in id_ranges(ids, REPAIR_BATCH_IDS):
            conn.execute(statement, (lo, hi))
    if spec.relation == "user_dashboard_stats":
        note_owners_changed(conn, user_ids)


def id_ranges(ids: list[int], width: int) -> list[tuple[int, int]]:
    """Half-open ranges [lo, hi), at most `width` ids wide, covering every id in `ids`."""
    ranges: list[tuple[int, int]] = []
    for an_id in sorted(set(ids)):
        if ranges and an_id < ranges[-1][0] + width:
            ranges[-1] = (ranges[-1][0], an_id + 1)
        else:
            ranges.append((an_id, an_id + 1))
    return ranges


# ---------------------------------------------------------------------------- redis


def check_redis(client: redis.Redis, conn: psycopg.Connection, prefix: str, *, fix: bool) -> Check:
    """Compare every cached vote set with the votes table; with `fix`, rebuild the drifted keys.

    A key that differs is read again (Redis and database) before it counts: a vote commits
    before its SADD, so a key caught in between is not drift.
    """
    started = time.perf_counter()
    checked = 0
    suspects: list[int] = []
    for cached in votecache.cached_sets(client, prefix):
        checked += len(cached)
        truth = votecache.upvoted_projects(conn, list(cached))
        suspects += [user_id for user_id, members in cached.items() if members != truth[user_id]]
    drifted = still_differing(client, conn, prefix, suspects)
    check = Check(REDIS_CHECK, checked, len(drifted), sample=[str(u) for u in drifted[:5]])
    if fix and drifted:
        check.fixed = rebuild_until_done(client, conn, prefix, drifted)
        check.remaining = len(still_differing(client, conn, prefix, drifted))
    check.seconds = round(time.perf_counter() - started, 3)
    return check


def still_differing(
    client: redis.Redis, conn: psycopg.Connection, prefix: str, user_ids: list[int]
) -> list[int]:
    if not user_ids:
        return []
    time.sleep(0.05)  # let votes that committed during the first read reach Redis
    pipe = client.pipeline(transaction=False)
    for user_id in user_ids:
        pipe.exists(votecache.upvotes_key(prefix, user_id))
        pipe.smembers(votecache.upvotes_key(prefix, user_id))
    replies = pipe.execute(raise_on_error=False)
    truth = votecache.upvoted_projects(conn, user_ids)
    return [
        user_id
        for user_id, exists, members in zip(user_ids, replies[::2], replies[1::2], strict=True)
        if exists and votecache.parse_members(members) != truth[user_id]
    ]


def rebuild_until_done(
    client: redis.Redis, conn: psycopg.Connection, prefix: str, user_ids: list[int]
) -> int:
    """Rebuild the keys; a user whose vote raced the rebuild is tried again (3 rounds at most)."""
    rebuilt = 0
    remaining = user_ids
    for _ in range(3):
        done = set(votecache.rebuild_users(client, conn, prefix, remaining))
        rebuilt += len(done)
        remaining = [user_id for user_id in remaining if user_id not in done]
        if not remaining:
            break
    return rebuilt


# ---------------------------------------------------------------------------- views


def check_views(conn: psycopg.Connection, url: str, settings: Settings, *, fix: bool) -> Check:
    """Views whose oldest change not applied yet is older than the freshness promise are drift.

    The change log is routed first, so a change no daemon picked up counts for its views.
    """
    started = time.perf_counter()
    views = known_views(conn)
    route_changes(conn)
    overdue = [
        row[0]
        for row in conn.execute(
            queries("reconcile.sql")["overdue_views"],
            {"overdue_after_s": FRESHNESS_MAX_S + settings.refresh_poll_s},
        )
    ]
    check = Check(VIEWS_CHECK, len(views), len(overdue), sample=overdue[:5])
    if fix and overdue:
        runs = refresh(url, settings, views=overdue)
        check.fixed = sum(run.status == "completed" for run in runs)
        check.remaining = len(overdue) - check.fixed
    check.seconds = round(time.perf_counter() - started, 3)
    return check


def record_run(conn: psycopg.Connection, report: ReconcileReport, started_at: dt.datetime) -> int:
    return conn.execute(
        queries("reconcile.sql")["record_run"],
        {
            "started_at": started_at,
            "fix": report.fix,
            "drift_total": report.drift_total,
            "rows_checked": sum(check.rows_checked for check in report.checks),
            "truth_rows_per_s": report.truth_rows_per_s,
            "duration_ms": round(report.seconds * 1000),
            "worker_id": worker_id(),
            "checks": json.dumps([asdict(check) for check in report.checks]),
            "mode": "changed" if report.changed else "full",
            "keys_checked": report.keys_checked,
        },
    ).fetchone()[0]
