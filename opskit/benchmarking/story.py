"""`opskit bench`: the whole before-and-after story in one command.

On the configured server: seed a fresh database, clone it twice (CREATE DATABASE ... TEMPLATE),
migrate only the "after" clone and refresh its views, then serve each clone with its own API
server and run the load K times per mode, alternating before and after, each run in a fresh
Locust process. The write side joins the story: the vote-write cost with and without triggers
(`opskit bench-writes`) and how stale the after mode's views were while it served the load (a
`opskit scheduler` daemon runs beside the after server). Everything lands next to the
report: NAME/before, NAME/after, NAME/story.json, then NAME.html.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import psycopg
from psycopg import sql

from opskit.benchmarking import api_process, capacity, clones, loadtest, report, seed
from opskit.benchmarking.loadtest import LoadPlan, RunSummary
from opskit.core import servers
from opskit.core.db import connect, redis_client
from opskit.core.errors import BadInput, DatabaseError, ProblemFound, first_line
from opskit.core.settings import Settings
from opskit.engine import migrations, refresh
from opskit.sql import queries

STORY_FILE = "story.json"
FLOOR_PATH = "/api/health/db"  # one SELECT 1 through the API's pool: the fastest an answer can be
FLOOR_REQUESTS = 300
CLONES = ("seed", "before", "after")
SETTLE_TIMEOUT_S = 30.0  # the after views apply the last writes of the runs


@dataclass(frozen=True)
class BenchPlan:
    scale: str
    load: LoadPlan  # its mode is ignored: both modes run
    write_cost: bool = True  # measure vote writes with and without triggers first
    write_writers: int = 8
    write_seconds: float = 5.0
    database_prefix: str = "opskit_bench"
    keep_databases: bool = False
    ramp: capacity.CapacityPlan | None = None  # each mode's capacity ramp (its mode is ignored)

    def validate(self, out: Path) -> None:
        if out.suffix not in (".html", ".md"):
            raise BadInput(
                f"the report {out} must end in .html or .md",
                hint="e.g. -o reports/demo.html; its data goes to reports/demo/",
            )
        if self.scale not in seed.SCALES:
            raise BadInput(
                f"unknown scale {self.scale!r}", hint=f"choose one of: {', '.join(seed.SCALES)}"
            )
        if self.load.rate is None:
            raise BadInput("opskit bench needs --rate: both modes get the same arrival rate")
        self.load.validate()
        if self.ramp is not None:
            self.ramp.validate()


@dataclass
class BenchResult:
    report: str
    data_dir: str
    story: dict
    runs: dict[str, list[RunSummary]]
    steps: list[dict] = field(default_factory=list)  # {"step": str, "seconds": float}

    def as_dict(self) -> dict:
        return {
            "report": self.report,
            "data_dir": self.data_dir,
            "story": self.story,
            "runs": {mode: [r.as_dict() for r in runs] for mode, runs in self.runs.items()},
            "steps": self.steps,
        }


class _Steps:
    """Times each step of the story and announces it."""

    def __init__(self, note: Callable[[str], None]) -> None:
        self.note = note
        self.done: list[dict] = []

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        self.note(name)
        started = time.perf_counter()
        yield
        self.done.append({"step": name, "seconds": round(time.perf_counter() - started, 2)})


def bench(
    settings: Settings,
    plan: BenchPlan,
    out: Path,
    *,
    note: Callable[[str], None] | None = None,
    progress: loadtest.RunsProgress | None = None,
) -> BenchResult:
    """Run the story and write the report to `out` (.html, or .md for the Markdown summary)."""
    plan.validate(out)
    database_url = servers.resolve_database_url(settings)
    redis_url = servers.resolve_redis_url(settings)
    # Unreachable servers are an environment error (exit 3) before any step starts.
    connect(database_url).close()
    redis_client(redis_url).close()
    data_dir = out.with_suffix("")
    if data_dir.exists() and not (data_dir / STORY_FILE).exists():
        raise BadInput(
            f"{data_dir} exists and is not an `opskit bench` result folder",
            hint="choose another -o name; bench only replaces its own earlier results",
        )
    steps = _Steps(note or (lambda message: None))
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{data_dir.name}.partial-", dir=data_dir.parent))
    urls = {name: _clone_url(database_url, plan, name) for name in CLONES}
    try:
        story: dict = {"scale": plan.scale, "write_cost": None}
        if plan.write_cost:
            with steps.step("write cost: vote writes without and with the triggers"):
                story["write_cost"] = _write_cost(settings, plan, database_url)
        with ExitStack() as cleanup:
            if not plan.keep_databases:
                cleanup.callback(clones.drop_databases, database_url, list(urls.values()))
            _prepare_databases(settings, plan, database_url, urls, story, steps)
            runs = _alternate_runs(settings, plan, urls, redis_url, staging, story, steps, progress)
        (staging / STORY_FILE).write_text(json.dumps(story, indent=2) + "\n")
        if data_dir.exists():
            shutil.rmtree(data_dir)  # an earlier bench's results (checked above)
        staging.rename(data_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    with steps.step("report"):
        written = report.render(
            data_dir / "before",
            data_dir / "after",
            out,
            story=story,
            fmt="md" if out.suffix == ".md" else "html",
        )
    return BenchResult(
        report=str(written), data_dir=str(data_dir), story=story, runs=runs, steps=steps.done
    )


# ---------------------------------------------------------------------------- databases


def _clone_url(database_url: str, plan: BenchPlan, name: str) -> str:
    return clones.database_url(database_url, f"{plan.database_prefix}_{name}")


def _prepare_databases(
    settings: Settings,
    plan: BenchPlan,
    admin_url: str,
    urls: dict[str, str],
    story: dict,
    steps: _Steps,
) -> None:
    """Seed, clone twice, migrate and refresh the after clone; record the timings in `story`."""
    clones.drop_databases(admin_url, list(urls.values()))  # leftovers of an interrupted bench
    try:
        with connect(admin_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("CREATE DATABASE {}").format(
                    sql.Identifier(clones.database_name(urls["seed"]))
                )
            )
            with steps.step(f"seed {plan.scale} data"):
                seeded = seed.seed_database(urls["seed"], plan.scale, plan.load.seed)
            story["seed_s"] = round(seeded.total_seconds, 2)
            with steps.step("clone the seeded database for before and after"):
                for mode in ("before", "after"):
                    clones.clone_database(admin, urls["seed"], urls[mode])
    except psycopg.Error as err:
        raise DatabaseError(f"cannot create the bench databases: {first_line(err)}") from err
    with steps.step("migrate the after clone"):
        migrated = migrations.migrate(urls["after"])
    story["migrate"] = [
        {"phase": phase["name"], "duration_ms": phase["duration_ms"]} for phase in migrated.applied
    ]
    with steps.step("refresh the after clone's views"):
        refresh.refresh(urls["after"], settings, all_views=True)
    for mode in ("before", "after"):  # the same planner statistics for both
        with connect(urls[mode], autocommit=True) as conn:
            conn.execute("ANALYZE")


# ---------------------------------------------------------------------------- the runs


def _alternate_runs(
    settings: Settings,
    plan: BenchPlan,
    urls: dict[str, str],
    redis_url: str,
    staging: Path,
    story: dict,
    steps: _Steps,
    progress: loadtest.RunsProgress | None,
) -> dict[str, list[RunSummary]]:
    """K runs per mode, before and after alternating, each against its own server and clone."""
    # Below OPSKIT_REDIS_PREFIX, like every key opskit writes; deleted at the end.
    prefix = f"{settings.redis_prefix}{plan.database_prefix}:{os.getpid()}:"
    runs: dict[str, list[RunSummary]] = {"before": [], "after": []}
    with ExitStack() as servers:
        servers.callback(clones.forget_redis_keys, redis_url, prefix)
        targets = {
            mode: servers.enter_context(
                api_process.api_server(
                    settings,
                    mode,
                    urls[mode],
                    redis_url,
                    redis_prefix=f"{prefix}{mode}:",
                    log_path=staging / f"api-{mode}.log",
                )
            )
            for mode in ("before", "after")
        }
        servers.enter_context(
            _daemon(settings, urls["after"], redis_url, f"{prefix}after:", staging / "daemon.log")
        )
        for index in range(1, plan.load.repeat + 1):
            for mode in ("before", "after"):
                (staging / mode).mkdir(exist_ok=True)
                with steps.step(f"{mode} run {index}/{plan.load.repeat}"):
                    runs[mode].append(
                        loadtest.run_once(
                            settings,
                            replace(plan.load, mode=mode),
                            staging / mode / f"run-{index:02d}",
                            target_url=targets[mode],
                            database_url=urls[mode],
                            redis_url=redis_url,
                            repeat_index=index,
                            scale=plan.scale,
                            progress=progress and loadtest.bind_progress(progress, mode, index),
                        )
                    )
        with steps.step(f"API floor: {FLOOR_REQUESTS} x GET {FLOOR_PATH} per mode"):
            story["api_floor"] = {
                f"{mode} {stat}": value
                for mode, target in targets.items()
                for stat, value in _floor(target).items()
            }
        with steps.step("let the after views catch up"):
            _settle_views(urls["after"], SETTLE_TIMEOUT_S)
        if plan.ramp is not None:
            story["capacity"] = _capacity(settings, plan.ramp, urls, redis_url, prefix, steps)
    story["staleness"] = _staleness(
        urls["after"], [(run.started_at, run.finished_at) for run in runs["after"]]
    )
    return runs


def _capacity(
    settings: Settings,
    plan: capacity.CapacityPlan,
    urls: dict[str, str],
    redis_url: str,
    redis_prefix: str,
    steps: _Steps,
) -> dict:
    """Each mode's ramp (`opskit capacity`, with its own API server), and how stale the after
    views were during the after ramp (the daemon keeps running)."""
    ramps = {}
    for mode in ("before", "after"):
        with steps.step(f"{mode} capacity ramp (up to {plan.users_max} users)"):
            ramps[mode] = capacity.capacity(
                settings,
                replace(plan, mode=mode),
                database_url=urls[mode],
                redis_url=redis_url,
                redis_prefix=f"{redis_prefix}{mode}:",
            ).as_dict()
    with steps.step("let the after views catch up"):
        _settle_views(urls["after"], SETTLE_TIMEOUT_S)
    after = ramps["after"]
    ramps["staleness"] = _staleness(urls["after"], [(after["started_at"], after["finished_at"])])
    return ramps


@contextmanager
def _daemon(settings: Settings, url: str, redis_url: str, redis_prefix: str, log_path: Path):
    """`opskit scheduler` on the after clone: it refreshes the views and folds the deltas."""
    env = {
        **os.environ,
        "OPSKIT_DATABASE_URL": url,
        "OPSKIT_REDIS_URL": redis_url,
        "OPSKIT_REDIS_PREFIX": redis_prefix,
        "OPSKIT_HOME": str(settings.home),
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "opskit", "scheduler"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield process
        finally:
            api_process.stop_process(process)
    if process.returncode not in (0, -signal.SIGTERM):
        lines = log_path.read_text(errors="replace").strip().splitlines()
        raise ProblemFound(
            f"the daemon on the after clone exited with code {process.returncode}",
            hint=lines[-1][:300] if lines else None,
        )


def _settle_views(url: str, timeout_s: float) -> None:
    """Wait until the after clone has no change left to apply, or `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    pending = queries("story.sql")["pending_since"]
    with connect(url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            if not conn.execute(pending, {"since": 0}).fetchone()[0]:
                return
            time.sleep(0.5)


def _staleness(url: str, windows: list[tuple[float, float]]) -> dict | None:
    """Per applied batch, seconds from its oldest change to its end, from the first window's
    start (epoch s) to the last one's end."""
    if not windows:
        return None
    since = min(start for start, _ in windows)
    window = {"since": since, "until": max(end for _, end in windows)}
    bench_sql = queries("story.sql")
    with connect(url, autocommit=True) as conn:
        batches = conn.execute(bench_sql["staleness"], window).fetchall()
        refreshes = conn.execute(bench_sql["refreshes_since"], {"since": since}).fetchone()[0]
        pending = conn.execute(bench_sql["pending_since"], {"since": since}).fetchone()[0]
    by_view: dict[str, list[float]] = {}
    for view, seconds in batches:
        by_view.setdefault(view, []).append(seconds)
    return {
        **_quantiles([seconds for _view, seconds in batches]),
        "refreshes": int(refreshes),
        "batches": len(batches),
        "pending_at_end": int(pending),
        "by_view": {
            view: {**_quantiles(values), "batches": len(values)}
            for view, values in sorted(by_view.items())
        },
    }


def _quantiles(values: list[float]) -> dict[str, float | None]:
    waits = np.array(values)

    def pct(q: float) -> float | None:
        return round(float(np.percentile(waits, q)), 2) if len(waits) else None

    return {"p50_s": pct(50), "p95_s": pct(95), "max_s": pct(100)}


def _floor(url: str) -> dict[str, float]:
    """p50/p99 of sequential GET /api/health/db on one kept-alive connection."""
    import httpx

    latencies = []
    with httpx.Client(base_url=url, timeout=10) as client:
        for number in range(FLOOR_REQUESTS + FLOOR_REQUESTS // 10):  # the first tenth warms up
            started = time.perf_counter()
            response = client.get(FLOOR_PATH)
            if response.status_code != 200:
                return {}
            if number >= FLOOR_REQUESTS // 10:
                latencies.append((time.perf_counter() - started) * 1000)
    return {
        "p50_ms": round(float(np.percentile(latencies, 50)), 3),
        "p99_ms": round(float(np.percentile(latencies, 99)), 3),
    }


# ---------------------------------------------------------------------------- write side


def _write_cost(settings: Settings, plan: BenchPlan, admin_url: str) -> dict:
    """What `opskit bench-writes --json` prints for a short run at this scale."""
    command = [sys.executable, "-m", "opskit", "bench-writes", "--json"]
    command += ["--writers", str(plan.write_writers), "--seconds", str(plan.write_seconds)]
    command += ["--scale", plan.scale]
    env = {**os.environ, "OPSKIT_DATABASE_URL": admin_url, "OPSKIT_HOME": str(settings.home)}
    completed = subprocess.run(command, env=env, capture_output=True, text=True)
    if completed.returncode != 0:
        lines = (completed.stderr or completed.stdout).strip().splitlines()
        raise ProblemFound(
            f"`opskit bench-writes` failed (exit {completed.returncode})",
            hint=lines[-1] if lines else None,
        )
    return json.loads(completed.stdout)
