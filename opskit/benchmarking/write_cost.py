"""`opskit bench-writes`: what the triggers cost the app's hottest write, votes.

pgbench clients, each on its own connection, insert, flip and delete votes for a while, on keys
spread over all projects or on one hot project. The same load runs on a database without
opskit's phases and on a clone with all of them applied, so the difference is the triggers' cost.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import psutil
import psycopg
from psycopg import sql

from opskit.benchmarking import clones, seed
from opskit.core.db import connect
from opskit.core.errors import DatabaseError, EnvironmentProblem, ProblemFound
from opskit.engine import fold, migrations
from opskit.sql import queries

WARMUP_RUN_S = 3.0  # the discarded run on each database before the measured ones


@dataclass(frozen=True)
class WriteLoad:
    writers: int = 32
    seconds: float = 20.0
    hot: bool = False
    seed: int = 1
    rate: int | None = None  # votes/s over all writers (open model); None: flat out
    warmup_s: float = 2.0  # run first, then discarded: connection start-up and plan caching
    # "on"/"off" for the writers' sessions; None: the server's setting. The embedded server runs
    # with "off", which makes a write pure CPU, so the triggers' share is as large as it gets;
    # production runs with "on", where the commit's WAL flush is most of a write's time.
    synchronous_commit: str | None = None


@dataclass(frozen=True)
class WriteBenchResult:
    label: str
    hot: bool
    writers: int
    synchronous_commit: str  # as the writers' sessions had it
    seconds: float
    transactions: int
    tps: float
    p50_ms: float
    p99_ms: float
    deadlocks: int
    other_errors: int
    wal_bytes_per_write: float
    # CPU of the whole server (backends and background processes) per write, when the server
    # runs on this machine; unlike TPS it barely moves when neighbours load the machine.
    server_cpu_us_per_write: float | None
    after_checkpoint: bool = False  # the run started right after a CHECKPOINT (_checkpoint)

    def as_dict(self) -> dict:
        return asdict(self)


# The app's vote writes, as pgbench sees them: a C client, so the load generator does not eat
# the CPU the server needs on a small machine. 25% deletes, 60% upvotes, 15% downvotes (upserts
# that flip an existing vote).
PGBENCH_SCRIPT = r"""
\set user_id random(1, :n_users)
\if :hot = 1
\set project_id :hot_project
\else
\set project_id random(1, :n_projects)
\endif
\set draw random(1, 100)
\if :draw <= 25
DELETE FROM votes WHERE user_id = :user_id AND project_id = :project_id;
\elif :draw <= 85
INSERT INTO votes (user_id, project_id, vote_type) VALUES (:user_id, :project_id, 'up')
ON CONFLICT (user_id, project_id) DO UPDATE SET vote_type = EXCLUDED.vote_type
WHERE votes.vote_type IS DISTINCT FROM EXCLUDED.vote_type;
\else
INSERT INTO votes (user_id, project_id, vote_type) VALUES (:user_id, :project_id, 'down')
ON CONFLICT (user_id, project_id) DO UPDATE SET vote_type = EXCLUDED.vote_type
WHERE votes.vote_type IS DISTINCT FROM EXCLUDED.vote_type;
\endif
"""


def run_vote_writes(
    url: str, load: WriteLoad, label: str, *, fold_deltas: bool = False
) -> WriteBenchResult:
    """Drive vote writes on `url` with pgbench; measure throughput, latency, deadlocks, WAL.

    With `fold_deltas`, phase 1's delta rows are folded every second meanwhile, as the daemon
    does in production: the fold's server CPU is part of what the writes cost, and without it
    the pending deltas pile up over the runs.
    """
    bench_sql = queries("write_cost.sql")
    with connect(url, autocommit=True) as conn:
        n_users, hot_project, n_projects = _targets(conn, bench_sql)
        after_checkpoint = _checkpoint(conn, bench_sql)
        wal_start = conn.execute(bench_sql["wal_lsn"]).fetchone()[0]
        postmaster = _local_postmaster(conn.info.backend_pid)
        cpu_start = _server_cpu_seconds(postmaster)
        synchronous_commit = load.synchronous_commit or str(
            conn.execute("SHOW synchronous_commit").fetchone()[0]
        )
    with tempfile.TemporaryDirectory(prefix="opskit-bench-writes-") as workdir:
        script = Path(workdir) / "votes.sql"
        script.write_text(PGBENCH_SCRIPT)
        command = [
            _pgbench(),
            "--no-vacuum",
            "--client",
            str(load.writers),
            "--jobs",
            str(min(load.writers, 2)),
            "--time",
            str(max(1, round(load.seconds + load.warmup_s))),
            "--file",
            str(script),
            "--random-seed",
            str(load.seed),
            "--define",
            f"n_users={n_users}",
            "--define",
            f"n_projects={n_projects}",
            "--define",
            f"hot_project={hot_project}",
            "--define",
            f"hot={int(load.hot)}",
            "--failures-detailed",
            "--log",
            "--log-prefix",
            str(Path(workdir) / "tx"),
            *(["--rate", str(load.rate)] if load.rate else []),
            url,
        ]
        started_at = time.time()
        session_options = (
            f"{os.environ.get('PGOPTIONS', '')} -c synchronous_commit={synchronous_commit}"
        )
        folding = fold.folding_in_background(url) if fold_deltas else contextlib.nullcontext()
        with folding:
            completed = subprocess.run(
                command,
                capture_output=True,
                text=True,
                cwd=workdir,
                env={**os.environ, "PGOPTIONS": session_options},
            )
        if completed.returncode not in (0, 2):  # 2: some transactions failed, reported below
            raise ProblemFound(
                f"pgbench failed: {(completed.stderr or completed.stdout).strip().splitlines()[-1]}"
            )
        # pgbench log: client, tx number, latency µs, script, end epoch s, end µs [, lag µs];
        # under --rate the latency counts from the scheduled start (no coordinated omission).
        rows = np.array(
            [
                [int(fields[2]), int(fields[4]) + int(fields[5]) / 1e6]
                for log in Path(workdir).glob("tx*")
                for fields in (line.split() for line in log.read_text().splitlines())
                if len(fields) >= 6 and fields[2].isdigit()
            ]
        ).reshape(-1, 2)
        measured = rows[rows[:, 1] >= started_at + load.warmup_s]
        latencies_ms = measured[:, 0] / 1000
    with connect(url, autocommit=True) as conn:
        wal_bytes = conn.execute(bench_sql["wal_bytes_since"], (wal_start,)).fetchone()[0]
    cpu_end = _server_cpu_seconds(postmaster)
    report = completed.stdout
    count = len(latencies_ms)
    seconds = _reported(report, r"^duration: (\d+) s", load.seconds + load.warmup_s) - load.warmup_s
    return WriteBenchResult(
        label=label,
        hot=load.hot,
        writers=load.writers,
        synchronous_commit=synchronous_commit,
        seconds=seconds,
        transactions=count,
        tps=round(count / seconds, 1),
        p50_ms=round(float(np.percentile(latencies_ms, 50)), 3) if count else 0.0,
        p99_ms=round(float(np.percentile(latencies_ms, 99)), 3) if count else 0.0,
        deadlocks=int(_reported(report, r"number of deadlock failures: (\d+)", 0)),
        other_errors=int(_reported(report, r"number of serialization failures: (\d+)", 0)),
        wal_bytes_per_write=round(float(wal_bytes) / len(rows), 1) if len(rows) else 0.0,
        server_cpu_us_per_write=(
            round((cpu_end - cpu_start) * 1e6 / len(rows), 1)
            if cpu_start is not None and cpu_end is not None and len(rows)
            else None
        ),
        after_checkpoint=after_checkpoint,
    )


def _checkpoint(conn: psycopg.Connection, bench_sql: dict) -> bool:
    """Start the run right after a checkpoint, if the role may (superuser or pg_checkpoint).

    The first change to a page after a checkpoint writes the whole page to the WAL, so a
    checkpoint that falls inside one run of a pair and not the other would weigh on that run
    alone; started right after one, every run is in the same phase of the checkpoint cycle (its
    most expensive one, with runs far shorter than checkpoint_timeout).
    """
    try:
        conn.execute(bench_sql["checkpoint"])
    except psycopg.errors.InsufficientPrivilege:
        return False
    return True


def _local_postmaster(backend_pid: int) -> psutil.Process | None:
    """The server process of our backend if it runs on this machine (else None)."""
    try:
        parent = psutil.Process(backend_pid).parent()
    except psutil.Error:
        return None
    return parent if parent is not None and "postgres" in parent.name() else None


def _server_cpu_seconds(postmaster: psutil.Process | None) -> float | None:
    """User + system CPU of the server so far: live children, and ended ones it has reaped."""
    if postmaster is None:
        return None
    try:
        times = postmaster.cpu_times()
        total = times.user + times.system + times.children_user + times.children_system
        for child in postmaster.children():
            with contextlib.suppress(psutil.Error):  # a backend that ended meanwhile
                child_times = child.cpu_times()
                total += child_times.user + child_times.system
    except psutil.Error:
        return None
    return total


def _reported(report: str, pattern: str, default: float) -> float:
    match = re.search(pattern, report, re.MULTILINE)
    return float(match.group(1)) if match else default


def _pgbench() -> str:
    from opskit.core.servers import pg_bin

    return pg_bin("pgbench")


def _targets(conn: psycopg.Connection, bench_sql: dict) -> tuple[int, int, int]:
    n_users = conn.execute(bench_sql["max_user_id"]).fetchone()[0]
    hot_project = conn.execute(bench_sql["hottest_project"]).fetchone()
    n_projects = conn.execute(bench_sql["max_project_id"]).fetchone()[0]
    if not n_users or hot_project is None or not n_projects:
        raise ProblemFound(
            "the database has no users or live projects to vote on",
            hint="seed it first: `opskit seed --scale small`",
        )
    return n_users, hot_project[0], n_projects


@dataclass(frozen=True)
class Comparison:
    """All phases vs no phases over the runs: medians, and the spread of the paired ratios."""

    throughput_vs_baseline: float | None  # median TPS with phases / median TPS without
    p99_vs_baseline: float | None
    throughput_ratio_range: tuple[float, float] | None  # min, max over (plain, phased) pairs
    p99_ratio_range: tuple[float, float] | None
    server_cpu_vs_baseline: float | None = None  # median CPU per write, phased / plain
    # The median of the pairs' own ratios: the two runs of a pair share the machine's state, so
    # on a noisy machine this moves less than the ratio of the medians above.
    throughput_pair_median: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def compare(results: list[WriteBenchResult]) -> Comparison:
    """Ratios of the "all phases" runs to the "no phases" runs of `compare_vote_writes`."""
    plain = [r for r in results if r.label == "no phases"]
    phased = [r for r in results if r.label == "all phases"]
    pairs = [(b, p) for b, p in zip(plain, phased, strict=False) if b.tps and b.p99_ms]
    if not pairs:
        return Comparison(None, None, None, None)

    def median_of(runs: list[WriteBenchResult], field: str) -> float:
        return float(np.median([getattr(r, field) for r in runs]))

    tps_ratios = [p.tps / b.tps for b, p in pairs]
    p99_ratios = [p.p99_ms / b.p99_ms for b, p in pairs]
    measured_cpu = all(r.server_cpu_us_per_write for r in plain + phased)
    return Comparison(
        throughput_vs_baseline=round(median_of(phased, "tps") / median_of(plain, "tps"), 3),
        p99_vs_baseline=round(median_of(phased, "p99_ms") / median_of(plain, "p99_ms"), 3),
        throughput_ratio_range=(round(min(tps_ratios), 3), round(max(tps_ratios), 3)),
        p99_ratio_range=(round(min(p99_ratios), 3), round(max(p99_ratios), 3)),
        throughput_pair_median=round(float(np.median(tps_ratios)), 3),
        server_cpu_vs_baseline=(
            round(
                median_of(phased, "server_cpu_us_per_write")
                / median_of(plain, "server_cpu_us_per_write"),
                3,
            )
            if measured_cpu
            else None
        ),
    )


@contextlib.contextmanager
def scratch_databases(url: str, scale: str, seed_value: int, note):
    """Yield (plain_url, phased_url): two scratch databases of `url`'s server, dropped after.

    The first is seeded with `scale`; the second is its clone with every phase applied. The
    operator's own database is never written to.
    """
    suffix = f"{int(time.time())}_{random.randint(0, 9999)}"
    plain_url = clones.database_url(url, f"opskit_benchw_plain_{suffix}")
    phased_url = clones.database_url(url, f"opskit_benchw_phases_{suffix}")
    try:
        with connect(url, autocommit=True) as admin:
            note(f"seeding {scale} into {clones.database_name(plain_url)}")
            admin.execute(
                sql.SQL("CREATE DATABASE {}").format(
                    sql.Identifier(clones.database_name(plain_url))
                )
            )
            seed.seed_database(plain_url, scale, seed_value)
            clones.clone_database(admin, plain_url, phased_url)
        note(f"applying every phase to {clones.database_name(phased_url)}")
        migrations.migrate(phased_url)
        yield plain_url, phased_url
    except psycopg.Error as err:
        raise DatabaseError(f"write benchmark failed: {err}") from err
    finally:
        clones.drop_databases(url, [phased_url, plain_url])


def compare_vote_writes(
    url: str, load: WriteLoad, *, scale: str = "small", repeat: int = 1, progress=None
) -> list[WriteBenchResult]:
    """The vote load on two scratch databases (scratch_databases): without phases, then with all.

    With `repeat` > 1 the two alternate, so a neighbour's load on a shared machine hits both
    alike; summarize with compare().
    """
    note = progress or (lambda message: None)
    with scratch_databases(url, scale, load.seed, note) as (plain_url, phased_url):
        results = []
        keys = "one hot project" if load.hot else "spread keys"
        commit = load.synchronous_commit or "as the server has it"
        # A discarded run on each first: the first writes after seeding and migrating pay
        # full-page images and cold caches, the phased database (more pages) far more, and
        # that would bias the first pair against the phases.
        note(f"warming up both databases ({WARMUP_RUN_S:.0f} s each, not measured)")
        warmup = replace(load, seconds=min(WARMUP_RUN_S, load.seconds), warmup_s=0.0, rate=None)
        for target in (plain_url, phased_url):
            run_vote_writes(target, warmup, "warm-up", fold_deltas=target == phased_url)
        for run in range(1, repeat + 1):
            for label, target in (("no phases", plain_url), ("all phases", phased_url)):
                note(
                    f"run {run}/{repeat}: {load.writers} writers for {load.seconds:.0f} s"
                    f" on {label} ({keys}, synchronous_commit {commit})"
                )
                results.append(
                    run_vote_writes(target, load, label, fold_deltas=target == phased_url)
                )
        return results


# ---- --breakdown: which part of the phases costs a vote write how much server CPU

# The triggers on votes, by part, as the phase files name them (identifiers come from here only).
VOTE_TRIGGERS = {
    "change_log": (
        "trg_opskit_mvlog_votes_ins",
        "trg_opskit_mvlog_votes_upd",
        "trg_opskit_mvlog_votes_moved",
        "trg_opskit_mvlog_votes_del",
    ),
    "phase1": ("trg_opskit_votes_ins", "trg_opskit_votes_upd", "trg_opskit_votes_del"),
}
# label, database, parts whose triggers are disabled for the run
BREAKDOWN_VARIANTS = (
    ("no phases", "plain", ()),
    ("all phases", "phased", ()),
    ("all phases, change-log triggers off", "phased", ("change_log",)),
    ("all phases, phase-1 vote triggers off", "phased", ("phase1",)),
    ("all phases, both off (indexes only)", "phased", ("change_log", "phase1")),
)
BREAKDOWN_WRITES = 20000  # measured per run: a second or two, many CPU clock ticks
BREAKDOWN_WARMUP_WRITES = 2000  # per run, not measured: plan caching, cold pages
BREAKDOWN_FOLD_BUDGET_S = 60.0  # folding one run's deltas takes well under a second


@dataclass(frozen=True)
class CpuRun:
    label: str
    backend_cpu_us_per_write: float
    log_rows: int | None  # rows the run added to mv_change_log (None: no phases)
    delta_rows: int | None  # rows the run added to project_stats_delta
    vote_triggers_on: list[str]  # opskit's triggers on votes that were enabled during the run

    def as_dict(self) -> dict:
        return asdict(self)


def hot_key_vote_mix(
    bench_sql: dict, n_users: int, hot_project: int, count: int, seed_value: int
) -> list[tuple[str, tuple]]:
    """`count` (statement, params) vote writes on `hot_project`: PGBENCH_SCRIPT's mix."""
    rng = random.Random(seed_value)
    mix = []
    for _ in range(count):
        user_id, draw = rng.randint(1, n_users), rng.randint(1, 100)
        if draw <= 25:
            mix.append((bench_sql["vote_delete"], (user_id, hot_project)))
        else:
            vote_type = "up" if draw <= 85 else "down"
            mix.append((bench_sql["vote_upsert"], (user_id, hot_project, vote_type)))
    return mix


WRITE_PATHS = ("vote", "message", "message_read", "intro", "intro_respond")


def write_path_statements(
    url: str, path: str, count: int, seed_value: int = 1
) -> tuple[list[str], list[str]]:
    """(setup, measured): `count` writes of one API write path on `url`'s data as literal SQL.

    For a single-user backend (`postgres --single`, tools/write_instructions.sh), which takes a
    line as a command and has no parameters. The setup runs before the phases are applied: the
    unread messages that `message_read` marks, the pending intros that `intro_respond` answers.
    vote is the hot-key mix of the pgbench script; message sends half to pairs that already
    talk and half to new pairs.
    """
    if path not in WRITE_PATHS:
        raise ValueError(f"path must be one of {WRITE_PATHS}, not {path!r}")
    bench_sql = queries("write_cost.sql")
    rng = random.Random(seed_value)
    with connect(url, autocommit=True) as conn:
        n_users, hot_project, _ = _targets(conn, bench_sql)
        cursor = psycopg.ClientCursor(conn)

        def literal(statement: str, params: tuple) -> str:
            return " ".join(cursor.mogrify(statement.split(";")[0], params).split()) + ";"

        def new_pairs() -> list[tuple[int, int]]:
            pairs = {(rng.randint(1, n_users), rng.randint(1, n_users)) for _ in range(count)}
            return sorted((a, b) for a, b in pairs if a != b)

        setup: list[tuple[str, tuple]] = []
        if path == "vote":
            measured = hot_key_vote_mix(bench_sql, n_users, hot_project, count, seed_value)
        elif path == "message":
            talking = conn.execute(bench_sql["conversation_pairs"], (count // 2,)).fetchall()
            pairs = [tuple(pair) for pair in talking] + new_pairs()[: count - len(talking)]
            measured = [(bench_sql["message_send"], (a, b, "hello")) for a, b in pairs]
        elif path == "message_read":
            pairs = new_pairs()
            setup = [(bench_sql["message_send"], (a, b, "unread")) for a, b in pairs]
            measured = [(bench_sql["message_read"], (b, a)) for a, b in pairs]
        else:
            first = conn.execute(bench_sql["max_intro_id"]).fetchone()[0] + 1
            intros = [
                (bench_sql["intro_request"], (first + i, a, b, "intro"))
                for i, (a, b) in enumerate(new_pairs())
            ]
            if path == "intro":
                measured = intros
            else:
                setup = intros
                measured = [
                    (bench_sql["intro_respond"], (rng.choice(("accepted", "declined")), first + i))
                    for i in range(len(intros))
                ]
        return (
            [literal(statement, params) for statement, params in setup],
            [literal(statement, params) for statement, params in measured],
        )


def vote_cpu_breakdown(
    url: str,
    *,
    scale: str = "small",
    seed_value: int = 1,
    writes: int | None = None,
    repeat: int = 3,
    progress=None,
) -> list[CpuRun]:
    """One session's backend CPU per vote write, with each part of the phases switched off.

    Unlike throughput, a backend's own CPU time barely moves when neighbours load the machine,
    so the differences between the variants are what each part costs: on a CPU-bound server
    they bound the throughput the phases can keep. One session on the hot project runs the
    pgbench script's mix; triggers are switched off with ALTER TABLE on the scratch clone only.
    """
    note = progress or (lambda message: None)
    writes = writes or BREAKDOWN_WRITES
    bench_sql = queries("write_cost.sql")
    with scratch_databases(url, scale, seed_value, note) as (plain_url, phased_url):
        urls = {"plain": plain_url, "phased": phased_url}
        with connect(plain_url, autocommit=True) as conn:
            n_users, hot_project, _ = _targets(conn, bench_sql)
            if _local_postmaster(conn.info.backend_pid) is None:
                raise EnvironmentProblem(
                    "--breakdown reads the server's CPU time: it needs PostgreSQL on this machine",
                    hint="run it against the embedded server (`opskit up`) or a local one",
                )
        mix = hot_key_vote_mix(
            bench_sql, n_users, hot_project, BREAKDOWN_WARMUP_WRITES + writes, seed_value
        )
        runs = []
        for run in range(1, repeat + 1):
            for label, database, parts_off in BREAKDOWN_VARIANTS:
                note(f"run {run}/{repeat}: {writes:,} vote writes, {label}")
                with connect(urls[database], autocommit=True) as conn:
                    _switch_vote_triggers(conn, parts_off, enable=False)
                    try:
                        runs.append(_cpu_run(conn, label, mix, bench_sql, database == "phased"))
                    finally:
                        _switch_vote_triggers(conn, parts_off, enable=True)
        return runs


def _switch_vote_triggers(conn: psycopg.Connection, parts: tuple[str, ...], *, enable: bool):
    action = sql.SQL("ENABLE" if enable else "DISABLE")
    for part in parts:
        for trigger in VOTE_TRIGGERS[part]:
            conn.execute(
                sql.SQL("ALTER TABLE votes {} TRIGGER {}").format(action, sql.Identifier(trigger))
            )


def _cpu_run(
    conn: psycopg.Connection, label: str, mix: list, bench_sql: dict, phased: bool
) -> CpuRun:
    conn.execute("SET synchronous_commit = off")  # CPU, not the WAL flush wait
    if phased:
        # Start from what the daemon's fold leaves (no pending delta), not from the deltas of
        # every earlier run: they piled up and the phased variants slowed down run after run.
        fold.fold_pending_deltas(conn, budget_s=BREAKDOWN_FOLD_BUDGET_S)
    backend = psutil.Process(conn.info.backend_pid)
    for statement, params in mix[:BREAKDOWN_WARMUP_WRITES]:
        conn.execute(statement, params, prepare=True)

    def counted(name: str) -> int | None:
        return conn.execute(bench_sql[name]).fetchone()[0] if phased else None

    log_before, delta_before = counted("log_rows"), counted("delta_rows")
    started = backend.cpu_times()
    for statement, params in mix[BREAKDOWN_WARMUP_WRITES:]:
        conn.execute(statement, params, prepare=True)
    ended = backend.cpu_times()
    cpu_s = (ended.user + ended.system) - (started.user + started.system)
    measured = len(mix) - BREAKDOWN_WARMUP_WRITES
    log_after, delta_after = counted("log_rows"), counted("delta_rows")
    triggers_on = [name for (name,) in conn.execute(bench_sql["vote_triggers_on"])]
    return CpuRun(
        label=label,
        backend_cpu_us_per_write=round(cpu_s * 1e6 / measured, 1),
        log_rows=None if log_before is None else log_after - log_before,
        delta_rows=None if delta_before is None else delta_after - delta_before,
        vote_triggers_on=triggers_on,
    )


def breakdown_summary(runs: list[CpuRun]) -> dict:
    """Median CPU per variant, what each part adds, and the CPU-bound throughput ceiling."""
    median = {
        label: float(np.median([r.backend_cpu_us_per_write for r in runs if r.label == label]))
        for label, _, _ in BREAKDOWN_VARIANTS
    }
    plain, phased, no_log, no_phase1, indexes_only = (
        median[label] for label, _, _ in BREAKDOWN_VARIANTS
    )
    return {
        "median_cpu_us_per_write": median,
        "part_cpu_us_per_write": {
            "change-log triggers": round(phased - no_log, 1),
            "phase-1 vote triggers (delta rows)": round(phased - no_phase1, 1),
            "indexes and the rest (triggers off)": round(indexes_only - plain, 1),
        },
        # A CPU-bound server's throughput scales with 1 / CPU per write.
        "cpu_bound_throughput_vs_baseline": round(plain / phased, 3) if phased else None,
    }
