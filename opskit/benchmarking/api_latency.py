"""`opskit bench-api`: each endpoint's latency in before and after mode, against the floor.

Like `opskit bench`, the seeded database is cloned twice: the app without opskit (no phase) and
with it (every phase, views refreshed). Three columns are measured: before mode on the first
(the app as it was: the speed-up targets are judged against it), before mode on the second
("before + indexes": what phase 4's indexes alone buy the old queries) and after mode on the
second. Each runs in its own `opskit serve` subprocess; this process drives one endpoint at a
time, in each column back to back, with a fixed number of requests (after a short warm-up)
from `concurrency` keep-alive connections, and records what the client saw and what the server
reports in its `Server-Timing` header. The floor is `/api/health/db` (one SELECT 1 through the
same pool), measured in the same run. Requests are the same seeded sequence in every column.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import os
import random
import secrets
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import numpy as np
from psycopg import sql as pgsql

from opskit.app import auth
from opskit.benchmarking import clones, seed, typos
from opskit.benchmarking.api_process import ApiProcess, server_env
from opskit.core.db import connect
from opskit.core.errors import ProblemFound
from opskit.core.settings import Settings
from opskit.engine import migrations, refresh
from opskit.engine.phase_files import BASE, PHASES
from opskit.sql import queries

FLOOR = "floor"
# The original write-up's speed-up claims, doubled: the targets (after p50 vs before p50).
TARGET_SPEEDUPS = {
    "stats": 24.0,
    "feed_trending": 13.0,
    "feed_newest": 13.0,
    "leaderboard_projects": 30.0,
    "leaderboard_builders": 30.0,
    "chains": 11.0,
    "search": 20.0,
    "search_typo": 20.0,
    "vote": 80.0,
    # The other writes: after mode's p50 at most 1.3x before mode's (the triggers' cost).
    **dict.fromkeys(("message", "message_read", "intro", "intro_respond"), round(1 / 1.3, 3)),
}
TARGET_P50_VS_FLOOR, TARGET_P99_VS_FLOOR = 2.0, 3.0
CLONE_ROLES = ("before", "after")  # <source>_before: no phase; <source>_after: every phase
# column -> (server mode, clone it serves)
COLUMNS = {
    "before": ("before", "before"),
    "before_indexes": ("before", "after"),
    "after": ("after", "after"),
}


@dataclass(frozen=True)
class Sample:
    """What a bench request needs from the database: real ids, slugs and words."""

    user_ids: list[int]
    project_ids: list[int]
    chain_slugs: list[str]
    search_terms: list[str]  # whole title words
    typos: list[typos.Typo]  # one-edit typos of title words (search_typo, and recall)
    unread_pairs: list[tuple[int, int, list[int]]]  # (reader, other user, unread message ids)
    pending_intros: list[tuple[int, int]]  # (intro id, target)

    def signed_in_users(self) -> set[int]:
        """Every user a request is sent as (each needs a token)."""
        return {
            *self.user_ids,
            *(reader for reader, _, _ in self.unread_pairs),
            *(target for _, target in self.pending_intros),
        }

    def resets(self) -> dict[str, tuple[str, dict]]:
        """Endpoint -> (api_latency.sql block, parameters) that undoes its writes, run on a
        column's clone before the column is measured: every column does the same writes."""
        return {
            "message_read": (
                "reset_read_messages",
                {"message_ids": [i for _, _, ids in self.unread_pairs for i in ids]},
            ),
            "intro_respond": (
                "reset_pending_intros",
                {"intro_ids": [intro_id for intro_id, _ in self.pending_intros]},
            ),
        }


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    user_id: int | None = None
    body: dict | None = None


@dataclass
class Latencies:
    requests: int = 0
    errors: int = 0
    client_ms: list[float] = field(default_factory=list)
    server_ms: list[float] = field(default_factory=list)

    def summary(self) -> dict:
        def pct(values: list[float], q: float) -> float | None:
            return round(float(np.percentile(values, q)), 3) if values else None

        return {
            "requests": self.requests,
            "errors": self.errors,
            "p50_ms": pct(self.server_ms, 50),
            "p99_ms": pct(self.server_ms, 99),
            "client_p50_ms": pct(self.client_ms, 50),
            "client_p99_ms": pct(self.client_ms, 99),
        }


@dataclass
class BenchResult:
    database: str  # the seeded source
    databases: dict[str, str]  # the clones by role, when kept
    setup: list[dict]  # {"step": str, "seconds": float}
    requests: int
    concurrency: int
    pool_size: int
    repeat: int  # rounds; figures are medians over them
    modes: dict[str, dict[str, dict]]  # column -> endpoint -> Latencies.summary()
    endpoints: list[dict]
    # after mode's first pages for the typo set (typos.Recall.as_dict()), when search_typo ran
    search_recall: dict | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def load_sample(database_url: str, rng: random.Random) -> Sample:
    with connect(database_url, autocommit=True) as conn:
        named = queries("api_latency.sql")
        user_ids = [row[0] for row in conn.execute(named["bench_users"])]
        project_ids = [row[0] for row in conn.execute(named["bench_projects"])]
        slugs = [row[0] for row in conn.execute(named["bench_chain_slugs"])]
        words = [row[0] for row in conn.execute(named["bench_title_words"])]
        long_words = [
            row[0]
            for row in conn.execute(
                named["bench_typo_words"], {"min_length": typos.MIN_WORD_LENGTH}
            )
        ]
        unread_pairs = [tuple(row) for row in conn.execute(named["bench_unread_pairs"])]
        pending_intros = [tuple(row) for row in conn.execute(named["bench_pending_intros"])]
    if not (user_ids and project_ids and slugs and words and long_words):
        raise ProblemFound("the database has too little data to benchmark: seed it first")
    if not (unread_pairs and pending_intros):
        raise ProblemFound(
            "the database has no unread message or pending intro request to benchmark: seed it"
        )
    return Sample(
        user_ids,
        project_ids,
        slugs,
        words,
        typos.typo_set(long_words, rng),
        unread_pairs,
        pending_intros,
    )


def _calls(sample: Sample, rng: random.Random) -> dict[str, Callable[[], Call]]:
    """One request generator per endpoint (the floor first)."""

    def pick(values):
        return rng.choice(values)

    def page() -> int:
        return rng.choice((1, 1, 1, 2, 3))

    def two_users() -> tuple[int, int]:
        return tuple(rng.sample(sample.user_ids, 2))

    def message() -> Call:
        sender, recipient = two_users()
        return Call("POST", "/api/messages", sender, {"recipient_id": recipient, "body": "bench"})

    def message_read() -> Call:
        reader, other, _ = pick(sample.unread_pairs)
        return Call("POST", f"/api/messages/{other}/read", reader)

    def intro() -> Call:
        requester, target = two_users()
        return Call("POST", "/api/intros", requester, {"target_id": target, "message": "bench"})

    # Each pending intro is answered once per column (in order; the column's reset makes them
    # pending again); past the sample they come round again and answer 409 (counted as errors).
    pending = itertools.cycle(sample.pending_intros)

    def intro_respond() -> Call:
        intro_id, target = next(pending)
        body = {"status": pick(("accepted", "declined"))}
        return Call("POST", f"/api/intros/{intro_id}/respond", target, body)

    return {
        FLOOR: lambda: Call("GET", "/api/health/db"),
        "stats": lambda: Call("GET", "/api/users/stats", pick(sample.user_ids)),
        "feed_trending": lambda: Call(
            "GET", f"/api/projects?sort=trending&page={page()}", pick(sample.user_ids)
        ),
        "feed_newest": lambda: Call("GET", f"/api/projects?sort=newest&page={page()}"),
        "project": lambda: Call(
            "GET", f"/api/projects/{pick(sample.project_ids)}", pick(sample.user_ids)
        ),
        "leaderboard_projects": lambda: Call("GET", f"/api/leaderboard/projects?page={page()}"),
        "leaderboard_builders": lambda: Call("GET", f"/api/leaderboard/builders?page={page()}"),
        "chains": lambda: Call(
            "GET", f"/api/chains?sort={pick(('members', 'activity'))}&page={page()}"
        ),
        "chain_posts": lambda: Call("GET", f"/api/chains/{pick(sample.chain_slugs)}/posts"),
        "search": lambda: Call("GET", f"/api/search?q={pick(sample.search_terms)}"),
        "search_typo": lambda: Call("GET", f"/api/search?q={pick(sample.typos).text}"),
        "investors": lambda: Call("GET", f"/api/investors?page={page()}"),
        "conversations": lambda: Call("GET", "/api/messages/conversations", pick(sample.user_ids)),
        "intro_stats": lambda: Call("GET", "/api/intros/stats", pick(sample.user_ids)),
        "vote": lambda: Call(
            "POST",
            "/api/votes",
            pick(sample.user_ids),
            {"project_id": pick(sample.project_ids), "vote_type": pick(("up", "down", "none"))},
        ),
        "message": message,
        "message_read": message_read,
        "intro": intro,
        "intro_respond": intro_respond,
    }


async def _drive(
    base_url: str,
    calls: list[Call],
    tokens: dict[int, str],
    concurrency: int,
    warmup: int,
    budget_s: float = float("inf"),
) -> Latencies:
    """Send `calls` from `concurrency` connections; the first `warmup` are not recorded.

    No new request starts after `budget_s` seconds (slow before-mode endpoints get fewer).
    """
    latencies = Latencies()
    queue = collections.deque(enumerate(calls))
    deadline = time.monotonic() + budget_s
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60) as client:

        async def worker() -> None:
            while queue and time.monotonic() < deadline:
                index, call = queue.popleft()
                headers = (
                    {"Authorization": f"Bearer {tokens[call.user_id]}"} if call.user_id else {}
                )
                started = time.perf_counter()
                try:
                    response = await client.request(
                        call.method, call.path, json=call.body, headers=headers
                    )
                except httpx.TimeoutException:  # a loaded machine's before mode: an error
                    response = None
                client_ms = (time.perf_counter() - started) * 1000
                if index < warmup:
                    continue
                latencies.requests += 1
                if response is None or (
                    response.status_code >= 400 and response.status_code != 404
                ):
                    latencies.errors += 1
                    continue
                latencies.client_ms.append(client_ms)
                timing = response.headers.get("server-timing", "")
                if "dur=" in timing:
                    latencies.server_ms.append(float(timing.rpartition("dur=")[2]))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def prepare_scale_database(admin_url: str, scale: str, progress=None) -> str:
    """A database `opskit_benchapi_<scale>` seeded at `scale` (kept for reuse as the source)."""
    name = f"opskit_benchapi_{scale}"
    url = clones.database_url(admin_url, name)
    with connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(name)))
    if not _is_seeded(url):
        if progress:
            progress(f"seeding {scale} data into {name}")
        seed.seed_database(url, scale, 1, force=True)
    return url


def prepare_clones(
    settings: Settings, source_url: str, progress: Callable[[str], None] | None = None
) -> tuple[dict[str, str], list[dict]]:
    """Clone the seeded source into `<source>_before` (no phase) and `<source>_after` (all).

    The after clone is migrated and its views refreshed; a source that already has phases is
    rolled back to base in the before clone, so "before" is always the app without opskit.
    Returns the clones' URLs by role and the timed setup steps.
    """
    source = clones.database_name(source_url)
    urls = {role: clones.database_url(source_url, f"{source}_{role}") for role in CLONE_ROLES}
    steps: list[dict] = []

    def timed(name: str, action: Callable[[], object]) -> None:
        if progress:
            progress(name)
        started = time.perf_counter()
        action()
        steps.append({"step": name, "seconds": round(time.perf_counter() - started, 2)})

    clones.drop_databases(source_url, list(urls.values()))  # leftovers of an interrupted run

    def clone_both() -> None:
        with connect(source_url, autocommit=True) as admin:
            for role in CLONE_ROLES:
                clones.clone_database(admin, source_url, urls[role])

    timed(f"clone {source} into {source}_before and {source}_after", clone_both)
    if len(_missing_phases(urls["before"])) < len(PHASES):
        timed(
            "roll the before clone back to base",
            lambda: migrations.rollback(urls["before"], to=BASE),
        )
    timed("migrate the after clone", lambda: migrations.migrate(urls["after"]))
    timed(
        "refresh the after clone's views",
        lambda: refresh.refresh(urls["after"], settings, all_views=True),
    )

    def vacuum() -> None:
        # Steady state on both sides, as autovacuum leaves a live database: planner statistics,
        # and visibility maps so index-only scans skip the heap (fresh views have none).
        for url in urls.values():
            with connect(url, autocommit=True) as conn:
                conn.execute("VACUUM (ANALYZE)")

    timed("vacuum and analyze both clones", vacuum)
    return urls, steps


def bench_api(
    settings: Settings,
    source_url: str,
    redis_url: str,
    *,
    requests: int = 500,
    concurrency: int = 4,
    pool_size: int = 4,
    endpoints: list[str] | None = None,
    budget_s: float = 60.0,
    keep_databases: bool = False,
    repeat: int = 1,
    log_dir: Path,
    progress: Callable[[str], None] | None = None,
) -> BenchResult:
    """Bench every endpoint: before mode on a clone without phases and on one with them, after
    mode on the one with them. `source_url` is a seeded database; it is only read (cloned).

    `repeat` rounds each measure every endpoint (the floor first); each figure is the median
    over the rounds of that round's figure, and the floor ratios also carry their range."""
    if not _is_seeded(source_url):
        raise ProblemFound(
            "the database has no seeded app data to benchmark",
            hint="run `opskit seed`, or use --scale to bench a scratch database",
        )
    secret = secrets.token_urlsafe(32)
    sample = load_sample(source_url, random.Random(1))
    tokens = {
        user_id: auth.mint_token(secret, user_id, 3600) for user_id in sample.signed_in_users()
    }
    resets = sample.resets()
    warmup = max(2, min(requests // 5, 2 * concurrency))  # few: slow endpoints have a budget
    redis_prefix = f"{settings.redis_prefix}benchapi:{os.getpid()}:"
    log_dir.mkdir(parents=True, exist_ok=True)
    rounds: list[dict[str, dict[str, dict]]] = []  # per round: column -> endpoint -> summary
    with ExitStack() as cleanup:
        cleanup.callback(clones.forget_redis_keys, redis_url, redis_prefix)
        urls, setup = prepare_clones(settings, source_url, progress)
        if not keep_databases:
            cleanup.callback(clones.drop_databases, source_url, list(urls.values()))
        servers, generators = {}, {}
        for column, (mode, role) in COLUMNS.items():
            env = server_env(
                settings,
                urls[role],
                redis_url,
                redis_prefix=f"{redis_prefix}{column}:",
                jwt_secret=secret,
            )
            log_path = log_dir / f"serve-{column}.log"
            servers[column] = cleanup.enter_context(
                # Each endpoint's query path, not after mode's answer cache (its repeated
                # anonymous requests would all be hits): the cache shows in `opskit capacity`.
                ApiProcess(mode, env, pool_size=pool_size, log_path=log_path, answer_cache_s=0)
            )
            generators[column] = _calls(sample, random.Random(2))  # the same requests in each
        for server in servers.values():
            server.wait_healthy()
            # Every user's vote cache key exists before measuring (after mode): steady state.
            priming = [Call("GET", f"/api/projects/{sample.project_ids[0]}", u) for u in tokens]
            asyncio.run(_drive(server.url, priming, tokens, concurrency, warmup=len(priming)))
        names = [FLOOR] + [
            n for n in generators["after"] if n != FLOOR and (not endpoints or n in endpoints)
        ]
        for round_number in range(1, repeat + 1):
            columns: dict[str, dict[str, dict]] = {column: {} for column in servers}
            # Endpoint by endpoint, the three columns back to back: on a shared machine the load
            # changes over minutes, and this way it changes little between the figures compared.
            for name in names:
                for column, server in servers.items():
                    if progress:
                        progress(f"round {round_number}/{repeat}, {column}: {name}")
                    if name in resets:
                        _reset(urls[COLUMNS[column][1]], *resets[name])
                    calls = [generators[column][name]() for _ in range(warmup + requests)]
                    latencies = asyncio.run(
                        _drive(server.url, calls, tokens, concurrency, warmup, budget_s)
                    )
                    columns[column][name] = latencies.summary()
            rounds.append(columns)
        search_recall = None
        if "search_typo" in names:
            if progress:
                progress(f"recall of after-mode search on {len(sample.typos)} typos")
            search_recall = _search_recall(servers["after"].url, sample.typos).as_dict()
    return BenchResult(
        database=source_url,
        databases=urls if keep_databases else {},
        setup=setup,
        requests=requests,
        concurrency=concurrency,
        pool_size=pool_size,
        repeat=repeat,
        modes=_median_modes(rounds),
        endpoints=_median_rows([_compare(columns) for columns in rounds]),
        search_recall=search_recall,
    )


def _reset(database_url: str, block: str, params: dict) -> None:
    with connect(database_url, autocommit=True) as conn:
        conn.execute(queries("api_latency.sql")[block], params)


def _search_recall(base_url: str, typo_set: list[typos.Typo]) -> typos.Recall:
    with httpx.Client(base_url=base_url, timeout=60) as client:

        def first_page(q: str) -> list[dict]:
            response = client.get("/api/search", params={"q": q})
            response.raise_for_status()
            return response.json()["items"]

        return typos.recall(typo_set, first_page)


def _is_seeded(url: str) -> bool:
    named = queries("api_latency.sql")
    with connect(url, autocommit=True) as conn:
        if not conn.execute(named["has_app_tables"]).fetchone()[0]:
            return False
        return conn.execute(named["has_users"]).fetchone()[0]


def _missing_phases(database_url: str) -> list[str]:
    with connect(database_url, autocommit=True) as conn:
        if conn.execute("SELECT to_regclass('opskit_migrations') IS NULL").fetchone()[0]:
            return list(PHASES)
        applied = {row[0] for row in conn.execute("SELECT name FROM opskit_migrations")}
    return [phase for phase in PHASES if phase not in applied]


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, 2)


def _median(values: list) -> float | None:
    present = [value for value in values if value is not None]
    return round(float(np.median(present)), 3) if present else None


def _combine_rounds(per_round: list[dict]) -> dict:
    """One dict of figures from each round's: counts summed (per column when a dict), other
    numbers their median over the rounds, the rest (names, verdicts) as in the first round."""
    combined = {}
    for key, first in per_round[0].items():
        values = [figures[key] for figures in per_round]
        if key in ("requests", "errors"):
            combined[key] = (
                {column: sum(v[column] for v in values) for column in first}
                if isinstance(first, dict)
                else sum(values)
            )
        elif first is None or (isinstance(first, int | float) and not isinstance(first, bool)):
            combined[key] = _median(values)
        else:
            combined[key] = first
    return combined


def _median_modes(rounds: list[dict[str, dict[str, dict]]]) -> dict[str, dict[str, dict]]:
    """Each column's summaries over the rounds: median latencies, summed request counts."""
    return {
        column: {
            name: _combine_rounds([columns[column][name] for columns in rounds]) for name in by_name
        }
        for column, by_name in rounds[0].items()
    }


def _median_rows(rounds: list[list[dict]]) -> list[dict]:
    """The endpoint rows of every round as one: median figures (each round's ratios are to that
    round's floor), summed counts, the floor ratios' range, verdicts on the medians."""
    rows = []
    for per_round in zip(*rounds, strict=True):
        row = _combine_rounds(list(per_round))
        for key in ("after_p50_vs_floor", "after_p99_vs_floor"):
            values = [r[key] for r in per_round if r[key] is not None]
            row[f"{key}_range"] = [min(values), max(values)] if values else None
        rows.append({**row, **_verdicts(row)})
    return rows


def _verdicts(row: dict) -> dict:
    p50, p99, speedup = row["after_p50_vs_floor"], row["after_p99_vs_floor"], row["speedup_p50"]
    target = row["target_speedup"]
    return {
        "floor_target_met": (
            p50 is not None
            and p99 is not None
            and p50 <= TARGET_P50_VS_FLOOR
            and p99 <= TARGET_P99_VS_FLOOR
        ),
        "speedup_target_met": (
            None if target is None else speedup is not None and speedup >= target
        ),
    }


def _compare(columns: dict[str, dict[str, dict]]) -> list[dict]:
    before, indexed, after = columns["before"], columns["before_indexes"], columns["after"]
    floor = after[FLOOR]
    rows = []
    for name in after:
        speedup = _ratio(before[name]["p50_ms"], after[name]["p50_ms"])
        target = TARGET_SPEEDUPS.get(name)
        p50_vs_floor = _ratio(after[name]["p50_ms"], floor["p50_ms"])
        p99_vs_floor = _ratio(after[name]["p99_ms"], floor["p99_ms"])
        row = {
            "endpoint": name,
            "before_p50_ms": before[name]["p50_ms"],
            "before_p99_ms": before[name]["p99_ms"],
            "before_indexes_p50_ms": indexed[name]["p50_ms"],
            "before_indexes_p99_ms": indexed[name]["p99_ms"],
            "after_p50_ms": after[name]["p50_ms"],
            "after_p99_ms": after[name]["p99_ms"],
            "after_p50_vs_floor": p50_vs_floor,
            "after_p99_vs_floor": p99_vs_floor,
            "speedup_p50": speedup,
            "indexes_speedup_p50": _ratio(before[name]["p50_ms"], indexed[name]["p50_ms"]),
            "target_speedup": target,
            "requests": {column: columns[column][name]["requests"] for column in COLUMNS},
            "errors": sum(columns[column][name]["errors"] for column in COLUMNS),
        }
        rows.append({**row, **_verdicts(row)})
    return rows
