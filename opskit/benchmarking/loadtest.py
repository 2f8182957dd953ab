"""`opskit loadtest`: run a Locust scenario headless against the API and collect every request.

Locust runs in its own processes (it monkey-patches with gevent), started with a plan file: the
model (open: a fixed arrival rate; closed: a number of users), the scenario's locustfile in
`loadtests/`, and a fixture of real ids, tokens and search terms read from the database before
the run. The Locust side (`benchmarking.locust_user`) writes every request's timing; this side
samples the generator's CPU each second, then writes one result folder per repetition
(docs/benchmarking.md, "Load tests"): meta.json, requests.parquet, seconds.parquet and Locust's
own CSVs. A run folder is written under a temporary name and renamed when complete, so a failed
run leaves nothing behind.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

from opskit import __version__
from opskit.app import auth
from opskit.app.endpoints import MODES
from opskit.benchmarking import seed
from opskit.benchmarking.api_process import api_server, check_api, stop_process
from opskit.benchmarking.requestlog import STARTED_FILE, read_process_logs
from opskit.core import schema, servers
from opskit.core.db import connect, redis_client
from opskit.core.errors import BadInput, ProblemFound
from opskit.core.servers import free_port
from opskit.core.settings import Settings, mask_url
from opskit.sql import queries

SOURCE_ROOT = Path(__file__).resolve().parents[2]  # the checkout, when run from one (git commit)
# The scenarios: the checkout's `loadtests/` folder, shipped as this package (pyproject.toml).
SCENARIOS_DIR = resources.files("opskit.benchmarking.scenarios")
PERSONAS_MODULE = "personas"  # loadtests/personas.py holds user classes, not a scenario
HOST = "127.0.0.1"

CPU_HIGH_PCT = 70.0  # a generator process busier than this adds its own delays to the latencies
RATE_LOW_FRACTION = 0.95  # an open-model run that completed less than this missed its target
FLAGS = {
    "generator_cpu_high": "Locust used over 70% of a core per process: its own delays are in "
    "the latencies; add --workers or lower the rate",
    "rate_below_target": "under 95% of the scheduled requests completed in the measured "
    "window: the API (or Locust) fell behind, the corrected p99 shows by how much",
}
# Open model: users in the pool per request/s of target rate; a pool this size keeps the rate
# while the mean latency stays under a second, and a late request still counts its wait.
POOL_S = 1.0
POOL_MIN, POOL_MAX = 10, 2000
# Locust runs this much past the load window, so the last scheduled requests are all sent, and
# requests still in flight when it stops may finish (and are recorded) within STOP_TIMEOUT_S.
RUN_MARGIN_S = 1
STOP_TIMEOUT_S = 10
START_TIMEOUT_S = 60  # Locust start-up, and workers connecting to the master
# A worker writes its Parquet file as it quits: seconds on a loaded 2-core machine.
WORKER_EXIT_TIMEOUT_S = 60
FIXTURE_USERS, FIXTURE_PROJECTS, FIXTURE_CHAINS, FIXTURE_WORDS = 200, 5000, 1000, 500
TOKEN_SLACK_S = 3600  # tokens outlive the run comfortably
PG_SETTINGS = (
    "shared_buffers",
    "effective_cache_size",
    "work_mem",
    "maintenance_work_mem",
    "max_connections",
    "synchronous_commit",
    "wal_level",
    "max_wal_size",
    "checkpoint_timeout",
    "random_page_cost",
    "effective_io_concurrency",
    "max_parallel_workers_per_gather",
    "jit",
    "shared_preload_libraries",
)
LOCUST_CSV_PREFIX = "locust"  # locust_stats.csv, locust_stats_history.csv, locust_failures.csv

Progress = Callable[[float, float, float], None]  # (elapsed s, total s, generator CPU %)
RunsProgress = Callable[[str, int, float, float, float], None]  # (mode, run index, ...Progress)


def scenarios() -> dict[str, Path]:
    """Scenario name -> its locustfile: every `loadtests/*.py` except the personas module."""
    return {
        path.stem: path
        for path in sorted(SCENARIOS_DIR.iterdir(), key=lambda path: path.name)
        if path.suffix == ".py" and path.stem != PERSONAS_MODULE and not path.stem.startswith("_")
    }


@dataclass(frozen=True)
class LoadPlan:
    """What to run: one scenario against one mode, open model (rate) or closed (users)."""

    mode: str
    scenario: str
    duration_s: float
    warmup_s: float = 0.0
    rate: float | None = None  # open model: requests/s, the same for both modes
    users: int | None = None  # closed model: users sending back to back
    spawn_rate: float | None = None  # closed model: users started per second
    workers: int = 0  # 0: one Locust process; N: a master and N workers
    repeat: int = 1
    seed: int = 1

    @property
    def model(self) -> str:
        return "open" if self.rate is not None else "closed"

    @property
    def load_s(self) -> float:
        return self.warmup_s + self.duration_s

    @property
    def locust_users(self) -> int:
        """Users Locust runs: the closed model's count, or the open model's pool."""
        if self.users is not None:
            return self.users
        pool = min(max(math.ceil(self.rate * POOL_S), POOL_MIN), POOL_MAX)
        processes = max(self.workers, 1)
        return math.ceil(pool / processes) * processes  # the same pool in every worker

    def validate(self) -> None:
        """Raise BadInput for a plan that cannot run or mixes the two models."""
        if self.mode not in MODES:
            raise BadInput(f"unknown mode {self.mode!r}", hint="use before or after")
        known = scenarios()
        if self.scenario not in known:
            raise BadInput(
                f"unknown scenario {self.scenario!r}",
                hint=f"choose one of: {', '.join(known) or 'none (loadtests/ is empty)'}",
            )
        if self.rate is not None and (self.users is not None or self.spawn_rate is not None):
            raise BadInput(
                "--rate (open model) cannot be combined with --users/--spawn-rate (closed model)",
                hint="give either --rate R, or --users U [--spawn-rate X]",
            )
        if self.spawn_rate is not None and self.users is None:
            raise BadInput("--spawn-rate needs --users", hint="the closed model starts U users")
        if self.rate is None and self.users is None:
            raise BadInput(
                "no load given", hint="give --rate R (open model) or --users U (closed model)"
            )
        checks = [
            (self.rate is None or 0 < self.rate <= 100_000, "--rate must be in (0, 100000]"),
            (self.users is None or self.users >= 1, "--users must be at least 1"),
            (self.spawn_rate is None or self.spawn_rate > 0, "--spawn-rate must be positive"),
            (self.duration_s >= 1, "--duration must be at least 1 second"),
            (self.warmup_s >= 0, "--warmup cannot be negative"),
            (self.workers >= 0, "--workers cannot be negative"),
            (self.repeat >= 1, "--repeat must be at least 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise BadInput(message)


@dataclass(frozen=True)
class RunSummary:
    """One repetition, as the CLI shows it (the folder holds everything)."""

    repeat_index: int
    path: str
    started_at: float  # epoch s: the load began (warm-up included)
    finished_at: float  # epoch s: the load window ended
    requests_total: int
    errors_total: int
    target_rate: float | None
    achieved_rate: float
    p50_ms: float | None
    p99_ms: float | None
    p99_corrected_ms: float | None
    generator_cpu_pct: float | None
    flags: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LoadtestResult:
    out: str
    target_url: str
    runs: list[RunSummary]

    def as_dict(self) -> dict:
        return {
            "out": self.out,
            "target_url": self.target_url,
            "runs": [r.as_dict() for r in self.runs],
        }


# ---------------------------------------------------------------------------- the verb


def loadtest(
    settings: Settings,
    plan: LoadPlan,
    out: Path,
    *,
    url: str | None = None,
    database_url: str | None = None,
    redis_url: str | None = None,
    scale: str | None = None,
    progress: RunsProgress | None = None,
) -> LoadtestResult:
    """Run `plan.repeat` repetitions into out/run-01 ... and rename `out` into place at the end.

    Without `url`, an `opskit serve --mode M` is started on a free port for the runs. The
    database (fixture, facts) and Redis default to the configured ones.
    """
    plan.validate()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BadInput(
            f"{out} already exists and is not empty",
            hint="choose a new --out folder; results are never overwritten",
        )
    database_url = database_url or servers.resolve_database_url(settings)
    redis_url = redis_url or servers.resolve_redis_url(settings)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        with _target(settings, plan.mode, database_url, redis_url, url) as target_url:
            runs = []
            for index in range(1, plan.repeat + 1):
                on_tick = None if progress is None else bind_progress(progress, plan.mode, index)
                runs.append(
                    run_once(
                        settings,
                        plan,
                        staging / f"run-{index:02d}",
                        target_url=target_url,
                        database_url=database_url,
                        redis_url=redis_url,
                        repeat_index=index,
                        scale=scale,
                        progress=on_tick,
                    )
                )
        if out.exists():
            out.rmdir()  # checked empty above
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    runs = [replace(r, path=str(out / Path(r.path).name)) for r in runs]
    return LoadtestResult(out=str(out), target_url=target_url, runs=runs)


def bind_progress(progress: RunsProgress, mode: str, index: int) -> Progress:
    """The one-run progress callback of run `index` of `mode`."""

    def on_tick(elapsed: float, total: float, cpu: float) -> None:
        progress(mode, index, elapsed, total, cpu)

    return on_tick


@contextmanager
def _target(
    settings: Settings, mode: str, database_url: str, redis_url: str, url: str | None
) -> Iterator[str]:
    if url is None:
        with api_server(settings, mode, database_url, redis_url) as started:
            yield started
        return
    yield served_url(url, mode)


def served_url(url: str, mode: str) -> str:
    """`url` without a trailing slash, once its API answers and serves `mode` (if it says)."""
    url = url.rstrip("/")
    health = check_api(url)
    served_mode = health.get("mode") if isinstance(health, dict) else None
    if served_mode and served_mode != mode:
        raise BadInput(
            f"the API at {mask_url(url)} serves mode {served_mode!r}, not --mode {mode}",
            hint=f"pass --mode {served_mode}, or point --url at an `opskit serve --mode {mode}`",
        )
    return url


# ---------------------------------------------------------------------------- one run


def run_once(
    settings: Settings,
    plan: LoadPlan,
    run_dir: Path,
    *,
    target_url: str,
    database_url: str,
    redis_url: str,
    repeat_index: int,
    scale: str | None = None,
    progress: Progress | None = None,
) -> RunSummary:
    """One repetition in a fresh Locust process; writes `run_dir` whole or not at all."""
    facts = environment_facts(database_url, redis_url)
    fixture = build_fixture(database_url, settings, token_ttl_s=plan.load_s + TOKEN_SLACK_S)
    staging = run_dir.parent / f".{run_dir.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        with tempfile.TemporaryDirectory(prefix="opskit-locust-") as workdir:
            records = Path(workdir) / "records"
            records.mkdir()
            plan_file = Path(workdir) / "plan.json"
            plan_file.write_text(
                json.dumps(
                    {
                        "model": plan.model,
                        "rate": plan.rate,
                        "workers": plan.workers,
                        "load_s": plan.load_s,
                        "run_s": plan.load_s + RUN_MARGIN_S,
                        "seed": f"{plan.seed}:{repeat_index}",
                        "record_dir": str(records),
                        "fixture": fixture,
                    }
                )
            )
            cpu = _run_locust(plan, target_url, plan_file, records, staging, progress)
            table, t0 = read_process_logs(records)
        if t0 is None:
            raise ProblemFound(
                "Locust ran but recorded no request",
                hint="check the scenario file and the API's log",
            )
        pq.write_table(table, staging / "requests.parquet")
        seconds = per_second(table, t0, plan, cpu)
        pq.write_table(seconds, staging / "seconds.parquet")
        summary, meta = summarize(table, seconds, t0, plan, run_dir, repeat_index)
        meta.update(facts)
        meta.update(target_url=target_url, scale=scale or _scale_of(facts["row_counts"]))
        (staging / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        staging.rename(run_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return summary


def _run_locust(
    plan: LoadPlan,
    target_url: str,
    plan_file: Path,
    records: Path,
    csv_dir: Path,
    progress: Progress | None,
) -> list[tuple[float, float]]:
    """Run Locust to the end; return its CPU samples (epoch s, % of one core)."""
    users = plan.locust_users
    spawn_rate = plan.spawn_rate or users * 4  # the open model's pool starts within 1/4 s
    run_s = plan.load_s + RUN_MARGIN_S
    head_args = [
        "--headless",
        "--host",
        target_url,
        "--users",
        str(users),
        "--spawn-rate",
        str(spawn_rate),
        "--stop-timeout",
        str(STOP_TIMEOUT_S),
        "--csv",
        str(csv_dir / LOCUST_CSV_PREFIX),
        "--exit-code-on-error",
        "0",
        "--only-summary",
    ]
    locustfiles = [scenarios()[plan.scenario]]
    with locust_processes(locustfiles, head_args, plan.workers, plan_file, csv_dir) as locust:
        samples = _sample_until_exit(
            locust.head, locust.processes, run_s, records / STARTED_FILE, progress
        )
        locust.wait()
    return samples


class LocustProcesses:
    """A running Locust: the head process (master, or the only one) and its workers."""

    def __init__(self, processes: list[subprocess.Popen], logs: list[Path]) -> None:
        self.processes = processes
        self.head = processes[0]
        self.logs = logs

    def running(self) -> bool:
        return self.head.poll() is None

    def any_running(self) -> bool:
        return any(process.poll() is None for process in self.processes)

    @property
    def returncode(self) -> int | None:
        return self.head.poll()

    def wait(self) -> None:
        """Wait for every process to end on its own (the head's run is over)."""
        limit_s = WORKER_EXIT_TIMEOUT_S
        try:
            for process in self.processes:
                process.wait(limit_s)
        except subprocess.TimeoutExpired:
            raise ProblemFound(
                f"Locust did not exit within {limit_s} s of its run's end",
                hint="is the API answering? see its log",
            ) from None

    def stop(self) -> None:
        for process in self.processes:
            stop_process(process)

    def last_log_line(self) -> str | None:
        return _last_line(self.logs[0])


@contextmanager
def locust_processes(
    locustfiles: list[Path],
    head_args: list[str],
    workers: int,
    plan_file: Path,
    log_dir: Path,
) -> Iterator[LocustProcesses]:
    """Start Locust on `locustfiles` (one process, or a master and `workers` workers) with the
    plan file in OPSKIT_LOADTEST_PLAN; stop what is left on exit and keep the logs in log_dir.

    Raises ProblemFound when the head process ended with an error.
    """
    workdir = plan_file.parent
    files = ",".join(str(path) for path in locustfiles)
    env = {**os.environ, "OPSKIT_LOADTEST_PLAN": str(plan_file)}
    logs: list[Path] = []

    def start(name: str, *args: str) -> subprocess.Popen:
        log = workdir / f"locust-{name}.log"
        logs.append(log)
        command = [sys.executable, "-m", "locust", "-f", files, "--loglevel", "WARNING", *args]
        with log.open("wb") as handle:
            return subprocess.Popen(
                command, env=env, cwd=workdir, stdout=handle, stderr=subprocess.STDOUT
            )

    processes: list[subprocess.Popen] = []
    try:
        if workers:
            port = free_port()
            master_args = ["--master", "--master-bind-host", HOST, "--master-bind-port", str(port)]
            master_args += ["--expect-workers", str(workers)]
            master_args += ["--expect-workers-max-wait", str(START_TIMEOUT_S)]
            processes.append(start("master", *head_args, *master_args))
            worker_args = ["--worker", "--master-host", HOST, "--master-port", str(port)]
            for number in range(workers):
                processes.append(start(f"worker-{number}", *worker_args))
        else:
            processes.append(start("main", *head_args))
        locust = LocustProcesses(processes, logs)
        yield locust
    finally:
        for process in processes:
            stop_process(process)
        for log in logs:  # kept with the results: Locust's warnings explain odd runs
            if log.parent != log_dir:
                shutil.copyfile(log, log_dir / log.name)
    if (locust.returncode or 0) > 0:  # < 0: stopped by a signal, ours
        raise ProblemFound(
            f"Locust exited with code {locust.returncode}",
            hint=locust.last_log_line() or "see Locust's output",
        )


def _last_line(path: Path) -> str | None:
    """The log's last error or warning (Locust's stats tables around them say little)."""
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    notes = [line for line in lines if "/ERROR/" in line or "/WARNING/" in line]
    picked = notes or lines
    return picked[-1][:300] if picked else None


def _sample_until_exit(
    head: subprocess.Popen,
    processes: list[subprocess.Popen],
    run_s: float,
    started_file: Path,
    progress: Progress | None,
) -> list[tuple[float, float]]:
    """Sample the generator's CPU once a second until the head process exits."""
    limit_s = run_s + START_TIMEOUT_S + STOP_TIMEOUT_S
    deadline = time.monotonic() + limit_s
    meter = GeneratorCpu([p.pid for p in processes])
    samples = []
    while head.poll() is None:
        if time.monotonic() > deadline:
            raise ProblemFound(
                f"Locust did not finish within {limit_s:.0f} s",
                hint="is the API answering? see its log",
            )
        time.sleep(1.0)
        sample = meter.sample()
        samples.append(sample)
        if progress is not None and started_file.exists():
            elapsed = time.time() - float(started_file.read_text() or "inf")
            progress(min(max(elapsed, 0.0), run_s), run_s, sample[1])
    return samples


class GeneratorCpu:
    """CPU % of a set of processes and their children since the previous sample (100 = 1 core)."""

    def __init__(self, pids: list[int]) -> None:
        self._roots = [psutil.Process(pid) for pid in pids]
        self._last_at = time.time()
        self._last = self._cpu_seconds()

    def _cpu_seconds(self) -> dict[int, float]:
        seconds: dict[int, float] = {}
        for root in self._roots:
            try:
                family = [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
            for process in family:
                try:
                    times = process.cpu_times()
                except psutil.Error:
                    continue
                seconds[process.pid] = times.user + times.system
        return seconds

    def sample(self) -> tuple[float, float]:
        """(epoch s, CPU % since the previous sample); a newborn process counts from zero."""
        now, current = time.time(), self._cpu_seconds()
        wall = max(now - self._last_at, 1e-6)
        busy = sum(current[pid] - self._last.get(pid, 0.0) for pid in current)
        self._last_at, self._last = now, current
        return now, busy / wall * 100


# ---------------------------------------------------------------------------- results


def per_second(
    requests: pa.Table, t0: float, plan: LoadPlan, cpu: list[tuple[float, float]]
) -> pa.Table:
    """seconds.parquet: completions, errors and generator CPU for each second of the load."""
    n = max(math.ceil(plan.load_s), 1)
    started = requests["started_at"].to_numpy()
    completed_at = started + requests["latency_ms"].to_numpy() / 1000
    second = np.floor(completed_at - t0).astype(np.int64)
    inside = (second >= 0) & (second < n)
    failed = ~requests["ok"].to_numpy(zero_copy_only=False)
    achieved = np.bincount(second[inside], minlength=n)[:n].astype(np.float64)
    errors = np.bincount(second[inside & failed], minlength=n)[:n].astype(np.int64)
    centers = t0 + np.arange(n) + 0.5
    if cpu:
        sampled_at = np.array([s[0] for s in cpu]) - 0.5  # a sample covers the second before it
        cpu_pct = np.interp(centers, sampled_at, np.array([s[1] for s in cpu]))
    else:
        cpu_pct = np.full(n, np.nan)
    return pa.table(
        {
            "second": pa.array(np.arange(n), pa.int64()),
            "target_rate": pa.array(np.full(n, float(plan.rate or "nan"))),
            "achieved_rate": pa.array(achieved),
            "errors": pa.array(errors),
            "generator_cpu_pct": pa.array(cpu_pct),
        }
    )


def summarize(
    requests: pa.Table,
    seconds: pa.Table,
    t0: float,
    plan: LoadPlan,
    run_dir: Path,
    repeat_index: int,
) -> tuple[RunSummary, dict]:
    """The run's headline figures and flags, and meta.json without the environment facts."""
    measured_from, finished_at = t0 + plan.warmup_s, t0 + plan.load_s
    started = requests["started_at"].to_numpy()
    latency = requests["latency_ms"].to_numpy()
    intended = requests["intended_at"].to_numpy()
    ok = requests["ok"].to_numpy(zero_copy_only=False)
    completed_at = started + latency / 1000
    window = (completed_at >= measured_from) & (completed_at < finished_at)
    achieved_rate = float(window.sum() / plan.duration_s)
    measured = (started >= measured_from) & (started < finished_at) & ok
    corrected = np.where(np.isnan(intended), latency, (started - intended) * 1000 + latency)
    second = seconds["second"].to_numpy()
    cpu = seconds["generator_cpu_pct"].to_numpy()[second >= plan.warmup_s]
    cpu_mean = float(np.nanmean(cpu)) if np.isfinite(cpu).any() else None

    flags = []
    if cpu_mean is not None and cpu_mean / max(plan.workers, 1) > CPU_HIGH_PCT:
        flags.append("generator_cpu_high")
    if plan.rate is not None and achieved_rate < RATE_LOW_FRACTION * plan.rate:
        flags.append("rate_below_target")

    def pct(values: np.ndarray, q: float) -> float | None:
        return round(float(np.percentile(values, q)), 3) if len(values) else None

    summary = RunSummary(
        repeat_index=repeat_index,
        path=str(run_dir),
        started_at=t0,
        finished_at=finished_at,
        requests_total=len(requests),
        errors_total=int((~ok).sum()),
        target_rate=plan.rate,
        achieved_rate=round(achieved_rate, 2),
        p50_ms=pct(latency[measured], 50),
        p99_ms=pct(latency[measured], 99),
        p99_corrected_ms=pct(corrected[measured], 99),
        generator_cpu_pct=None if cpu_mean is None else round(cpu_mean, 1),
        flags=flags,
    )
    meta = {
        "format": 1,
        "mode": plan.mode,
        "scenario": plan.scenario,
        "model": plan.model,
        "target_rate": None if plan.rate is None else float(plan.rate),
        "users": plan.locust_users,
        "workers": plan.workers,
        "duration_s": plan.duration_s,
        "warmup_s": plan.warmup_s,
        "started_at": t0,
        "finished_at": finished_at,
        "repeat_index": repeat_index,
        "flags": flags,
        "requests_total": summary.requests_total,
        "errors_total": summary.errors_total,
        "achieved_rate": summary.achieved_rate,
        "generator_cpu_pct": summary.generator_cpu_pct,
    }
    return summary, meta


# ---------------------------------------------------------------------------- inputs and facts


def build_fixture(database_url: str, settings: Settings, *, token_ttl_s: float) -> dict:
    """Real ids, signed-in users with tokens, chain slugs and search terms from the database."""
    fixture_sql = queries("loadtest.sql")
    with connect(database_url, autocommit=True) as conn:
        schema.require_base_schema(conn)
        users = conn.execute(fixture_sql["fixture_users"], {"limit": FIXTURE_USERS}).fetchall()
        project_ids = [
            row[0]
            for row in conn.execute(fixture_sql["fixture_project_ids"], {"limit": FIXTURE_PROJECTS})
        ]
        chain_slugs = [
            row[0]
            for row in conn.execute(fixture_sql["fixture_chain_slugs"], {"limit": FIXTURE_CHAINS})
        ]
        words = [
            row[0]
            for row in conn.execute(fixture_sql["fixture_title_words"], {"limit": FIXTURE_WORDS})
        ]
    if not (users and project_ids and chain_slugs and words):
        raise ProblemFound(
            "the database has no builders, live projects, chains or titles to load-test with",
            hint="seed it first: `opskit seed --scale small`",
        )
    secret = auth.jwt_secret(settings)
    ttl = math.ceil(token_ttl_s)
    user_ids = [user_id for user_id, _ in users]
    return {
        "users": [
            {
                "id": user_id,
                "token": auth.mint_token(secret, user_id, ttl),
                # everyone messages someone: fall back to other fixture users
                "peers": list(peers) or [other for other in user_ids[:20] if other != user_id],
            }
            for user_id, peers in users
        ],
        "project_ids": project_ids,
        "chain_slugs": chain_slugs,
        "search_terms": words,
        "misspelled_terms": [misspell(word, random.Random(word)) for word in words],
    }


def misspell(word: str, rng: random.Random) -> str:
    """One typing slip: two letters swapped, one dropped, one doubled or one replaced."""
    i = rng.randrange(len(word) - 1)
    slip = rng.choice(("swap", "drop", "double", "replace"))
    if slip == "swap":
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if slip == "drop":
        return word[:i] + word[i + 1 :]
    if slip == "double":
        return word[: i + 1] + word[i] + word[i + 1 :]
    neighbour = rng.choice([c for c in "aeiouy" if c != word[i]])
    return word[:i] + neighbour + word[i + 1 :]


def environment_facts(database_url: str, redis_url: str) -> dict:
    """meta.json's environment: PostgreSQL, Redis, CPU, opskit version and commit, row counts."""
    fact_sql = queries("loadtest.sql")
    with connect(database_url, autocommit=True) as conn:
        pg_version = conn.execute(fact_sql["server_version"]).fetchone()[0]
        pg_settings = dict(
            conn.execute(fact_sql["server_settings"], {"names": list(PG_SETTINGS)}).fetchall()
        )
        counts = schema.row_counts(conn)
    server = redis_client(redis_url).info("server")
    return {
        "row_counts": counts,
        "postgres": {"version": pg_version, "settings": pg_settings},
        "redis": {
            "version": str(server.get("valkey_version") or server.get("redis_version")),
            "server": "valkey" if "valkey_version" in server else "redis",
        },
        "cpu": cpu_facts(),
        "opskit_version": __version__,
        "git_commit": git_commit(SOURCE_ROOT),
    }


def cpu_facts() -> dict:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"model": model, "cores": os.cpu_count() or 1}


def git_commit(repo: Path) -> str | None:
    """HEAD's commit read from .git (no git binary needed); None outside a checkout."""
    git_dir = repo / ".git"
    try:
        head = (git_dir / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head or None
        ref = head.removeprefix("ref: ")
        loose = git_dir / ref
        if loose.exists():
            return loose.read_text().strip()
        for line in (git_dir / "packed-refs").read_text().splitlines():
            if line.endswith(f" {ref}"):
                return line.split()[0]
    except OSError:
        return None
    return None


def _scale_of(row_counts: dict[str, int]) -> str | None:
    """The seed scale whose user count matches, if any (the data may have been seeded so)."""
    for name, scale in seed.SCALES.items():
        if row_counts.get("users") == scale.users:
            return name
    return None
