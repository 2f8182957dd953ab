"""`opskit capacity`: how many users with think time the API holds under a p99 SLO.

Locust users wait a think time (uniform between MIN and MAX seconds) after each answer, and are
ramped in steps of `step` users, each step held `step_seconds`, in one Locust run (the ramp's
shape is `capacity_ramp.py`, a second locustfile beside the scenario). The Locust side writes
its requests to part files every second, so after each step this side measures that step
(requests completed in its window, after a settling time for the users it added) while the next
step runs, and stops the ramp after the first step that breaks the SLO: p99 over the bound, or
any error. A step is flagged when its figures may be the generator's rather than the API's: the
Locust processes were over 70% busy, or the users sent under 95% of what their think time allows
(users / (mean think + mean latency)). `held_users` is the largest unflagged step that held.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from opskit.benchmarking import api_process, loadtest
from opskit.benchmarking.requestlog import STEPS_FILE, STOP_FILE, WRITTEN_KEY
from opskit.core import servers
from opskit.core.db import connect
from opskit.core.errors import BadInput, EnvironmentProblem, ProblemFound
from opskit.core.settings import Settings, mask_url
from opskit.sql import queries

RAMP_LOCUSTFILE = Path(__file__).with_name("capacity_ramp.py")
FLUSH_S = 1.0  # how often each Locust process writes its requests (see locust_user)
PARTS_TIMEOUT_S = 60  # a step's requests not all written this long after its end: give up
STEP_START_TIMEOUT_S = 60  # Locust start-up, or a ramp tick delayed by a busy machine
GENERATOR_CPU_HIGH_PCT = 70.0  # of the generator's cores: over this, its own delays show
RATE_LOW_FRACTION = 0.95  # of users / (mean think + mean latency)
FLAGS = {
    "generator_cpu_high": "the Locust processes were over 70% busy: their own delays are in "
    "the latencies; add --workers",
    "rate_below_expected": "the users sent under 95% of users / (mean think + latency): the "
    "generator (or the machine) could not keep them going",
}
# The API server this verb starts: pool connections per worker process. On a few cores more
# connections than this only queue inside PostgreSQL; fewer are given when the database has
# fewer free connections (max_connections minus those in use, minus CONNECTIONS_SPARE for the
# daemon, the fixture and an operator's psql).
POOL_PER_WORKER = 8
POOL_MIN = 2
CONNECTIONS_SPARE = 10

Progress = Callable[["StepProgress"], None]


@dataclass(frozen=True)
class StepProgress:
    """Where the ramp is: step `index` (from 0) of `steps`, `elapsed_s` of `step_s` into it."""

    index: int
    steps: int
    users: int
    elapsed_s: float
    step_s: float
    generator_cpu: float | None
    last: StepResult | None


def parse_think(text: str) -> tuple[float, float]:
    """'1-5' -> (1.0, 5.0); BadInput unless it is MIN-MAX seconds with 0 <= MIN <= MAX <= 3600."""
    low, sep, high = text.partition("-")
    try:
        bounds = (float(low), float(high)) if sep else None
    except ValueError:
        bounds = None
    if bounds is None or not all(math.isfinite(b) for b in bounds):
        raise BadInput(f"--think {text!r} is not MIN-MAX seconds", hint="e.g. --think 1-5")
    if not 0 <= bounds[0] <= bounds[1] <= 3600:
        raise BadInput(
            f"--think {text!r}: need 0 <= MIN <= MAX <= 3600 seconds", hint="e.g. --think 1-5"
        )
    return bounds


@dataclass(frozen=True)
class CapacityPlan:
    mode: str
    scenario: str = "mixed"
    users_max: int = 5000
    step: int = 500
    step_s: float = 30.0
    think_min_s: float = 1.0
    think_max_s: float = 5.0
    slo_p99_ms: float = 200.0
    workers: int = 2  # Locust worker processes (0: one process)
    server_workers: int = 2  # `opskit serve --workers` when this verb starts the API
    seed: int = 1

    def validate(self) -> None:
        if self.mode not in loadtest.MODES:
            raise BadInput(f"unknown mode {self.mode!r}", hint="use before or after")
        known = loadtest.scenarios()
        if self.scenario not in known:
            raise BadInput(
                f"unknown scenario {self.scenario!r}", hint=f"choose one of: {', '.join(known)}"
            )
        checks = [
            (1 <= self.users_max <= 100_000, "--users-max must be in [1, 100000]"),
            (1 <= self.step <= self.users_max, "--step must be in [1, --users-max]"),
            (2 <= self.step_s <= 3600, "--step-seconds must be in [2, 3600]"),
            (0 <= self.think_min_s <= self.think_max_s, "--think needs 0 <= MIN <= MAX"),
            (self.think_max_s > 0, "--think MAX must be positive (users need think time)"),
            (0 < self.slo_p99_ms <= 600_000, "--slo-p99 must be in (0, 600000] ms"),
            (0 <= self.workers <= 64, "--workers must be in [0, 64]"),
            (1 <= self.server_workers <= 64, "--server-workers must be in [1, 64]"),
        ]
        for ok, message in checks:
            if not ok:
                raise BadInput(message)

    def users_per_step(self) -> list[int]:
        """step, 2 step, ... and users_max last (when it is not a multiple of step)."""
        counts = list(range(self.step, self.users_max + 1, self.step))
        if counts[-1] != self.users_max:
            counts.append(self.users_max)
        return counts

    @property
    def settle_s(self) -> float:
        """Unmeasured start of each step: its new users spawn and each sends a first request
        after one think time. At most half the step."""
        return min(self.think_max_s + FLUSH_S, self.step_s / 2)

    @property
    def think_mean_s(self) -> float:
        return (self.think_min_s + self.think_max_s) / 2

    @property
    def load_processes(self) -> int:
        return max(self.workers, 1)


@dataclass(frozen=True)
class StepResult:
    users: int
    started_at: float  # epoch s: the ramp set this step's user count
    measured_from: float
    measured_until: float
    requests: int
    rps: float
    expected_rps: float  # users / (mean think + mean latency)
    p50_ms: float | None
    p99_ms: float | None
    p99_corrected_ms: float | None  # from the think time's end, so generator lag counts too
    errors: int
    generator_cpu: float | None  # % of the generator's cores (100 = all busy)
    flags: list[str] = field(default_factory=list)
    error_kinds: dict[str, int] = field(default_factory=dict)  # "<endpoint> <status>": count
    # "<endpoint>": [answers, p99 ms] of the step's answers, slowest p99 first: which requests
    # make the step's p99 (writes wait for their commit, reads do not)
    endpoints_p99: dict[str, list] = field(default_factory=dict)
    held: bool = False  # p99 within the SLO and no error

    @property
    def flagged(self) -> bool:
        return bool(self.flags)

    def as_dict(self) -> dict:
        return {**asdict(self), "flagged": self.flagged}


def measure_step(
    *,
    users: int,
    started_at: float,
    window: tuple[float, float],
    requests,
    cpu_samples: list[tuple[float, float]],
    plan: CapacityPlan,
) -> StepResult:
    """A step's figures from the requests that completed in `window` (epoch s).

    `requests` is a table with requests.parquet's columns; `cpu_samples` are (epoch s, % of
    one core) of all Locust processes together, each covering the second before it.
    """
    import numpy as np

    start, end = window
    started = requests["started_at"].to_numpy()
    latency = requests["latency_ms"].to_numpy()
    intended = requests["intended_at"].to_numpy()
    ok = requests["ok"].to_numpy(zero_copy_only=False)
    completed = started + latency / 1000
    inside = (completed >= start) & (completed < end)
    good = inside & ok
    failed = inside & ~ok
    errors = int(failed.sum())
    kinds = Counter(
        f"{endpoint} {status}"
        for endpoint, status in zip(
            np.asarray(requests["endpoint"].to_pylist(), dtype=object)[failed],
            requests["status"].to_numpy()[failed],
            strict=True,
        )
    )
    duration = max(end - start, 1e-9)
    rps = float(inside.sum() / duration)
    mean_latency_s = float(latency[good].mean() / 1000) if good.any() else 0.0
    expected = users / (plan.think_mean_s + mean_latency_s)
    lag_ms = np.where(np.isnan(intended), 0.0, np.maximum(started - intended, 0.0) * 1000)

    def pct(values, q: float) -> float | None:
        return round(float(np.percentile(values, q)), 2) if len(values) else None

    names = np.asarray(requests["endpoint"].to_pylist(), dtype=object)
    per_endpoint = {
        name: [int((good & (names == name)).sum()), pct(latency[good & (names == name)], 99)]
        for name in sorted(set(names[good]))
    }
    busy = [pct for at, pct in cpu_samples if start < at <= end + FLUSH_S]
    cpu = round(sum(busy) / len(busy) / plan.load_processes, 1) if busy else None
    p99 = pct(latency[good], 99)
    flags = []
    if cpu is not None and cpu > GENERATOR_CPU_HIGH_PCT:
        flags.append("generator_cpu_high")
    if rps < RATE_LOW_FRACTION * expected:
        flags.append("rate_below_expected")
    return StepResult(
        users=users,
        started_at=started_at,
        measured_from=start,
        measured_until=end,
        requests=int(inside.sum()),
        rps=round(rps, 1),
        expected_rps=round(expected, 1),
        p50_ms=pct(latency[good], 50),
        p99_ms=p99,
        p99_corrected_ms=pct(latency[good] + lag_ms[good], 99),
        errors=errors,
        generator_cpu=cpu,
        flags=flags,
        error_kinds=dict(kinds.most_common()),
        endpoints_p99=dict(sorted(per_endpoint.items(), key=lambda item: -item[1][1])),
        held=p99 is not None and p99 <= plan.slo_p99_ms and errors == 0,
    )


def held_users(steps: list[StepResult]) -> int:
    """The largest step that held the SLO and was not flagged (0 if none)."""
    return max((s.users for s in steps if s.held and not s.flagged), default=0)


@dataclass
class CapacityResult:
    mode: str
    scenario: str
    target_url: str
    slo_p99_ms: float
    think_s: tuple[float, float]
    step_s: float
    users_max: int
    steps: list[StepResult]
    stopped_by: str  # "slo": a step broke it; "users_max": every step ran
    server: dict | None  # the API this verb started: workers and pool; None with --url
    started_at: float
    finished_at: float

    @property
    def held_users(self) -> int:
        return held_users(self.steps)

    def as_dict(self) -> dict:
        return {
            "steps": [s.as_dict() for s in self.steps],
            "held_users": self.held_users,
            "mode": self.mode,
            "scenario": self.scenario,
            "target_url": mask_url(self.target_url),
            "slo_p99_ms": self.slo_p99_ms,
            "think_s": list(self.think_s),
            "step_seconds": self.step_s,
            "users_max": self.users_max,
            "stopped_by": self.stopped_by,
            "server": self.server,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "flags": {name: FLAGS[name] for s in self.steps for name in s.flags},
        }


# ---------------------------------------------------------------------------- the verb


def capacity(
    settings: Settings,
    plan: CapacityPlan,
    *,
    url: str | None = None,
    database_url: str | None = None,
    redis_url: str | None = None,
    redis_prefix: str | None = None,
    progress: Progress | None = None,
) -> CapacityResult:
    """Ramp users against `url` (else an API this starts) until a step breaks the SLO.

    The fixture (ids, tokens, search terms) comes from `database_url` (the configured database
    by default), which must be the one the API serves.
    """
    plan.validate()
    database_url = database_url or servers.resolve_database_url(settings)
    with _api(settings, plan, database_url, redis_url, redis_prefix, url) as (target, server):
        fixture = loadtest.build_fixture(database_url, settings, token_ttl_s=_ramp_s(plan))
        started_at = time.time()
        steps = _ramp(plan, target, fixture, progress)
    return CapacityResult(
        mode=plan.mode,
        scenario=plan.scenario,
        target_url=target,
        slo_p99_ms=plan.slo_p99_ms,
        think_s=(plan.think_min_s, plan.think_max_s),
        step_s=plan.step_s,
        users_max=plan.users_max,
        steps=steps,
        stopped_by="slo" if steps and not steps[-1].held else "users_max",
        server=server,
        started_at=started_at,
        finished_at=time.time(),
    )


def _ramp_s(plan: CapacityPlan) -> float:
    return len(plan.users_per_step()) * plan.step_s + loadtest.TOKEN_SLACK_S


@contextmanager
def _api(
    settings: Settings,
    plan: CapacityPlan,
    database_url: str,
    redis_url: str | None,
    redis_prefix: str | None,
    url: str | None,
) -> Iterator[tuple[str, dict | None]]:
    """The API to load: `url` (checked to serve plan.mode), else `opskit serve` started here."""
    if url is not None:
        yield loadtest.served_url(url, plan.mode), None
        return
    pool = server_pool_size(database_url, plan.server_workers)
    redis_url = redis_url or servers.resolve_redis_url(settings)
    with api_process.api_server(
        settings,
        plan.mode,
        database_url,
        redis_url,
        redis_prefix=redis_prefix,
        workers=plan.server_workers,
        pool_size=pool,
    ) as target:
        yield target, {"workers": plan.server_workers, "pool_size": pool}


def server_pool_size(database_url: str, workers: int) -> int:
    """Pool connections per API worker: POOL_PER_WORKER, or fewer to fit max_connections."""
    with connect(database_url, autocommit=True) as conn:
        limit, in_use = conn.execute(queries("capacity.sql")["connection_budget"]).fetchone()
    free = limit - in_use - CONNECTIONS_SPARE
    per_worker = min(POOL_PER_WORKER, free // workers)
    if per_worker < POOL_MIN:
        raise EnvironmentProblem(
            f"the database has {max(free, 0)} free connections (max_connections {limit}, "
            f"{in_use} in use), too few for {workers} API workers",
            hint="lower --server-workers, or raise max_connections",
        )
    return per_worker


# ---------------------------------------------------------------------------- the ramp


def _ramp(
    plan: CapacityPlan, target_url: str, fixture: dict, progress: Progress | None
) -> list[StepResult]:
    """Run the Locust ramp; measure each step once it has ended; stop after a broken SLO."""
    import pyarrow as pa

    counts = plan.users_per_step()
    with tempfile.TemporaryDirectory(prefix="opskit-capacity-") as workdir:
        records = Path(workdir) / "records"
        records.mkdir()
        plan_file = Path(workdir) / "plan.json"
        plan_file.write_text(
            json.dumps(
                {
                    "model": "think",
                    "think_s": [plan.think_min_s, plan.think_max_s],
                    "steps": counts,
                    "step_s": plan.step_s,
                    "spawn_rate": plan.step * 4,  # a step's users start within 1/4 s
                    "workers": plan.workers,
                    "flush_s": FLUSH_S,
                    "seed": f"{plan.seed}:capacity",
                    "record_dir": str(records),
                    "fixture": fixture,
                }
            )
        )
        locustfiles = [loadtest.scenarios()[plan.scenario], RAMP_LOCUSTFILE]
        # No --stop-timeout: users moved between workers when a step rebalances them stop at
        # once (a graceful stop of a moved user fails in Locust 2.x and stalls its worker).
        head_args = ["--headless", "--host", target_url, "--only-summary"]
        head_args += ["--exit-code-on-error", "0"]  # failed requests are counted, not fatal
        parts = _RecordedParts(records, plan.load_processes)
        steps: list[StepResult] = []
        with loadtest.locust_processes(
            locustfiles, head_args, plan.workers, plan_file, Path(workdir)
        ) as locust:
            meter = loadtest.GeneratorCpu([p.pid for p in locust.processes])
            samples: list[tuple[float, float]] = []
            for index, users in enumerate(counts):
                started_at = _step_started(records, index, locust)
                end = started_at + plan.step_s
                while not (time.time() >= end and parts.read_until(end, locust)):
                    time.sleep(min(1.0, max(end - time.time(), 0.2)))
                    samples.append(meter.sample())
                    if progress is not None:
                        progress(
                            StepProgress(
                                index=index,
                                steps=len(counts),
                                users=users,
                                elapsed_s=min(time.time() - started_at, plan.step_s),
                                step_s=plan.step_s,
                                generator_cpu=samples[-1][1] / plan.load_processes,
                                last=steps[-1] if steps else None,
                            )
                        )
                step = measure_step(
                    users=users,
                    started_at=started_at,
                    window=(started_at + plan.settle_s, end),
                    requests=pa.concat_tables(parts.tables),
                    cpu_samples=samples,
                    plan=plan,
                )
                steps.append(step)
                if not step.held:
                    (records / STOP_FILE).touch()
                    break
            locust.stop()
    return steps


class _RecordedParts:
    """The request parts the Locust processes wrote so far, and until when each process wrote."""

    def __init__(self, folder: Path, processes: int) -> None:
        self.folder = folder
        self.processes = processes
        self.tables: list = []
        self._read: set[Path] = set()
        self._written_until: dict[int, float] = {}

    def read_until(self, until: float, locust: loadtest.LocustProcesses) -> bool:
        """Read the new parts; True once every process has written past `until` (epoch s).

        Raises ProblemFound when Locust is gone before, or no part comes for too long.
        """
        import pyarrow.parquet as pq

        for path in sorted(self.folder.glob("requests-*.parquet")):
            if path in self._read:
                continue
            self._read.add(path)
            table = pq.read_table(path)
            written_at = float((table.schema.metadata or {}).get(WRITTEN_KEY, b"0"))
            process = int(path.name.split("-")[1])
            self._written_until[process] = max(self._written_until.get(process, 0.0), written_at)
            self.tables.append(table.replace_schema_metadata(None))
        written = [self._written_until.get(k, 0.0) for k in range(self.processes)]
        if min(written) >= until:
            return True
        if not locust.any_running():
            raise ProblemFound(
                f"Locust exited before its requests up to the step's end were written "
                f"(code {locust.returncode})",
                hint=locust.last_log_line() or "see Locust's output",
            )
        if time.time() > until + PARTS_TIMEOUT_S:
            raise ProblemFound(
                f"a Locust process wrote no requests for {PARTS_TIMEOUT_S} s",
                hint="is the machine overloaded? see Locust's output",
            )
        return False


def _step_started(records: Path, index: int, locust: loadtest.LocustProcesses) -> float:
    """When the ramp started step `index` (epoch s), waiting for its line in the steps log."""
    deadline = time.monotonic() + STEP_START_TIMEOUT_S
    log = records / STEPS_FILE
    while True:
        lines = log.read_text().splitlines() if log.exists() else []
        if len(lines) > index:
            return float(json.loads(lines[index])["at"])
        if not locust.running():
            raise ProblemFound(
                f"Locust exited before step {index + 1} (code {locust.returncode})",
                hint=locust.last_log_line() or "see Locust's output",
            )
        if time.monotonic() > deadline:
            raise ProblemFound(
                f"the ramp did not start step {index + 1} within {STEP_START_TIMEOUT_S} s",
                hint="is the machine overloaded? see Locust's output",
            )
        time.sleep(0.2)


def write_result(result: CapacityResult, path: Path) -> None:
    """capacity.json of `opskit bench --capacity`: the verb's JSON answer."""
    staging = path.with_name(f".{path.name}.partial")
    staging.write_text(json.dumps(result.as_dict(), indent=2) + "\n")
    os.replace(staging, path)
