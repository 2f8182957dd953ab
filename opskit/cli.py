"""The `opskit` command line: parse arguments, call one core function, render its result.

Errors from the core arrive as OpskitError and leave as one line on stderr (plus a hint) and the
exit code of CONTRACT §2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import sys
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from typer.core import TyperGroup

from opskit import (
    __version__,
    api,
    apibench,
    auth,
    backfill,
    daemon,
    loadtest,
    migrations,
    reconcile,
    refresh,
    seed,
    services,
    soak,
    writebench,
)
from opskit.db import connect
from opskit.errors import OpskitError
from opskit.lint import lint as lint_migrations
from opskit.scheduler import build_scheduler
from opskit.settings import ENVIRONMENT_HELP, Settings, mask_url
from opskit.status import status_report
from opskit.verify import verify as verify_database

stdout = Console()
stderr = Console(stderr=True)


@dataclass
class CliState:
    debug: bool = False


class OpskitGroup(TyperGroup):
    """Maps OpskitError to one line on stderr and its exit code (the one error dispatcher)."""

    def invoke(self, ctx: typer.Context):
        wants_json = "--json" in ctx.args  # read now: invoking the verb consumes ctx.args
        try:
            return super().invoke(ctx)
        except OpskitError as error:
            if isinstance(ctx.obj, CliState) and ctx.obj.debug:
                raise
            if wants_json:  # a script reads stdout: it gets an object here too
                _print_json(
                    {"error": error.message, "hint": error.hint, "exit_code": int(error.exit_code)}
                )
            typer.echo(f"error: {error.message}", err=True)
            if error.hint:
                typer.echo(f"hint: {error.hint}", err=True)
            raise typer.Exit(int(error.exit_code)) from None


app = typer.Typer(
    cls=OpskitGroup,
    help="Denormalize a PostgreSQL + Redis web backend and prove the speed-up.\n\n"
    + ENVIRONMENT_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"opskit {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress (INFO).")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print version.")
    ] = False,
) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    ctx.obj = CliState(debug=debug)


def _settings() -> Settings:
    return Settings.from_env()


def _print_json(payload: object) -> None:
    sys.stdout.write(json.dumps(payload, default=str) + "\n")


JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]


# ---------------------------------------------------------------------------- servers


@app.command()
def up(
    pg_port: Annotated[
        int, typer.Option(min=0, max=65535, help="PostgreSQL port (0 picks a free one).")
    ] = services.DEFAULT_PG_PORT,
    redis_port: Annotated[
        int, typer.Option(min=0, max=65535, help="Valkey port (0 picks a free one).")
    ] = services.DEFAULT_REDIS_PORT,
    as_json: JsonOption = False,
) -> None:
    """Start the embedded PostgreSQL and Valkey under OPSKIT_HOME (idempotent).

    Servers run detached and outlive this command; `opskit down` stops them. A server whose URL
    is set in the environment (OPSKIT_DATABASE_URL, OPSKIT_REDIS_URL) is never started.
    """
    settings = _settings()
    status, started = services.up(
        settings.home,
        pg_port=pg_port,
        redis_port=redis_port,
        start_postgres=settings.database_url is None,
        start_valkey=settings.redis_url is None,
    )
    if as_json:
        _print_json({"started": started, **status.as_dict()})
        return
    for server in (status.postgres, status.valkey):
        if server is not None:
            state = "started" if server.name in started else "already running"
            stdout.print(f"{server.name}: {state} at {mask_url(server.url)} (pid {server.pid})")
    if settings.database_url:
        stdout.print(f"postgres: using OPSKIT_DATABASE_URL {mask_url(settings.database_url)}")
    if settings.redis_url:
        stdout.print(f"redis: using OPSKIT_REDIS_URL {mask_url(settings.redis_url)}")


@app.command()
def down(as_json: JsonOption = False) -> None:
    """Stop the embedded servers under OPSKIT_HOME (idempotent; data is kept)."""
    stopped = services.down(_settings().home)
    if as_json:
        _print_json({"stopped": stopped})
    elif stopped:
        stdout.print(f"stopped: {', '.join(stopped)}")
    else:
        stdout.print("no embedded server was running")


@app.command()
def env(as_json: JsonOption = False) -> None:
    """Print `export` lines for the database and Redis URLs in use.

    Use `eval "$(opskit env)"` to point other tools at the embedded servers. Passwords are
    masked, as in every URL opskit prints (the embedded servers have none).
    """
    settings = _settings()
    urls = {
        "OPSKIT_DATABASE_URL": services.resolve_database_url(settings),
        "OPSKIT_REDIS_URL": services.resolve_redis_url(settings),
    }
    masked = {name: mask_url(url) for name, url in urls.items()}
    if as_json:
        _print_json(masked)
        return
    for name, url in masked.items():
        typer.echo(f"export {name}={shlex.quote(url)}")


# ---------------------------------------------------------------------------- seed

ScaleName = Enum("ScaleName", {name: name for name in seed.SCALES}, type=str)
SynchronousCommit = Enum("SynchronousCommit", {name: name for name in ("on", "off")}, type=str)


@app.command("seed")
def seed_command(
    scale: Annotated[
        ScaleName, typer.Option(help="Data size: tiny (tests), small, medium or large.")
    ],
    seed_value: Annotated[
        int,
        typer.Option("--seed", min=0, max=seed.MAX_SEED, help="Random seed: same seed, same data."),
    ] = 1,
    force: Annotated[
        bool, typer.Option("--force", help="Wipe the app tables first if they hold data.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Create the base schema if absent and load deterministic synthetic data.

    Sizes (users / projects / votes / messages): tiny 200/60/2k/2k, small 5k/2k/100k/50k,
    medium 100k/20k/2M/1M, large 1M/200k/20M/10M. Runs in one transaction: on any error the
    database is left as it was. Refuses a database whose app tables hold rows unless --force.
    """
    settings = _settings()
    url = services.resolve_database_url(settings)
    with _progress_bars(transient=as_json) as progress:
        result = seed.seed_database(
            url, scale.value, seed_value, force=force, progress=_ProgressBars(progress)
        )
    if as_json:
        _print_json(
            {
                "database": mask_url(url),
                **asdict(result),
                "loads": [{**asdict(load), "rows_per_s": load.rows_per_s} for load in result.loads],
            }
        )
        return
    table = Table(title=f"seeded {result.scale} (seed {result.seed}) into {mask_url(url)}")
    table.add_column("table")
    table.add_column("rows", justify="right")
    table.add_column("seconds", justify="right")
    table.add_column("rows/s", justify="right")
    for load in result.loads:
        table.add_row(
            load.table, f"{load.rows:,}", f"{load.seconds:.2f}", f"{load.rows_per_s:,.0f}"
        )
    total_rows = sum(load.rows for load in result.loads)
    table.add_row("keys and indexes", "", f"{result.rebuild_seconds:.2f}", "")
    table.add_row("vacuum analyze", "", f"{result.vacuum_seconds:.2f}", "")
    table.add_row(
        "total",
        f"{total_rows:,}",
        f"{result.total_seconds:.2f}",
        f"{total_rows / result.total_seconds:,.0f}",
    )
    stdout.print(table)


# ---------------------------------------------------------------------------- migrations

PhaseName = Enum("PhaseName", {name: name for name in migrations.PHASES}, type=str)
RollbackTarget = Enum(
    "RollbackTarget", {name: name for name in (migrations.BASE, *migrations.PHASES)}, type=str
)
LockTimeoutOption = Annotated[
    str | None,
    typer.Option(
        help="lock_timeout per statement (PostgreSQL units, e.g. 5s); default: the "
        "phase file's SET, else 5s."
    ),
]
StatementTimeoutOption = Annotated[
    str | None,
    typer.Option(help="statement_timeout per statement; default: the phase file's SET, else 1h."),
]
LockRetriesOption = Annotated[
    int, typer.Option(min=0, max=100, help="Retries after a lock timeout, with doubling backoff.")
]


class _ProgressBars:
    """Rich bars keyed by name, speaking the core modules' progress protocols.

    Seeding (step_started / step_advanced), migrations (phase_started / statement_finished /
    index_build / notice) and the backfill (set) all draw through it.
    """

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._tasks: dict[str, int] = {}

    def start(self, name: str, total: int) -> None:
        if name in self._tasks:  # a retried phase starts again
            self._progress.reset(self._tasks[name], total=max(total, 1))
        else:
            self._tasks[name] = self._progress.add_task(name, total=max(total, 1))

    def advance(self, name: str, amount: int = 1) -> None:
        self._progress.advance(self._tasks[name], amount)

    def set(self, name: str, done: int, total: int) -> None:
        if name not in self._tasks:
            self.start(name, total)
        self._progress.update(self._tasks[name], completed=done, total=total)

    step_started = phase_started = start
    step_advanced = advance

    def statement_finished(self, phase: str) -> None:
        self.advance(phase)

    def index_build(self, index: str, blocks_done: int, blocks_total: int) -> None:
        self.set(f"index {index}", blocks_done, blocks_total)

    def notice(self, message: str) -> None:
        self._progress.console.log(message)


class _Bars(Progress):
    """Progress bars that leave nothing behind when transient or when no bar was ever shown."""

    def stop(self) -> None:
        if self.tasks and not self.live.transient:
            super().stop()
        else:  # Progress.stop would print an empty line on a non-terminal stderr
            self.live.transient = True
            self.live.stop()


def _progress_bars(transient: bool) -> Progress:
    return _Bars(
        TextColumn("{task.description:<32}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=stderr,
        transient=transient,
    )


@app.command()
def migrate(
    to: Annotated[PhaseName | None, typer.Option("--to", help="Stop after this phase.")] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="Print each pending statement with its lock; change nothing."
        ),
    ] = False,
    allow_changed: Annotated[
        bool,
        typer.Option("--allow-changed", help="Accept applied phase files whose checksum changed."),
    ] = False,
    no_wait: Annotated[
        bool, typer.Option("--no-wait", help="Exit 1 if another migrate runs, instead of waiting.")
    ] = False,
    grant_to: Annotated[
        list[str] | None,
        typer.Option(
            "--grant-to",
            metavar="ROLE",
            help="Let this role (the app's) write through opskit's triggers: grant it opskit's "
            "tables, sequences and views, now and on every later migrate. Repeatable.",
        ),
    ] = None,
    lock_timeout: LockTimeoutOption = None,
    statement_timeout: StatementTimeoutOption = None,
    lock_retries: LockRetriesOption = 5,
    as_json: JsonOption = False,
) -> None:
    """Apply the pending migration phases in order (CONTRACT §4).

    Each phase runs in one transaction and is recorded in the ledger (opskit_migrations) in that
    transaction; phases marked `-- opskit: no-transaction` (concurrent index builds) run
    statement by statement and resume after a crash. Two migrates never interleave: the second
    waits (or exits 1 with --no-wait). An applied phase whose file changed is refused (exit 1).
    The triggers run with the writer's privileges: if the app connects as another role than
    this one, name it with --grant-to.
    """
    url = services.resolve_database_url(_settings())
    timeouts = migrations.Timeouts(lock_timeout, statement_timeout, lock_retries)
    with _progress_bars(transient=as_json or dry_run) as progress:
        result = migrations.migrate(
            url,
            to=to.value if to else None,
            dry_run=dry_run,
            allow_changed=allow_changed,
            wait=not no_wait,
            timeouts=timeouts,
            progress=_ProgressBars(progress),
            grant_to=grant_to or (),
        )
    if as_json:
        _print_json(
            {
                "database": mask_url(url),
                "dry_run": result.dry_run,
                "applied": result.applied,
                "already_applied": result.already_applied,
                "granted_to": result.granted,
                "plan": [asdict(step) for step in result.plan],
            }
        )
        return
    if dry_run:
        for step in result.plan:
            first_line = " ".join(step.sql.split())[:90]
            stdout.print(
                f"{step.phase} #{step.number}: {first_line}\n"
                f"    lock: {step.lock}; blocks: {step.blocks}",
                markup=False,
            )
        stdout.print(f"{len(result.plan)} statements pending; nothing was changed")
        return
    for phase in result.applied:
        name, count, ms = phase["name"], phase["statements"], phase["duration_ms"]
        stdout.print(f"applied {name}: {count} statements in {ms} ms")
    if not result.applied:
        stdout.print("nothing to apply: every phase is applied")
    if result.granted:
        stdout.print(
            f"opskit's tables, sequences and views granted to: {', '.join(result.granted)}"
        )


@app.command()
def rollback(
    to: Annotated[
        RollbackTarget, typer.Option("--to", help="Undo the phases after this one (or all: base).")
    ],
    lock_timeout: LockTimeoutOption = None,
    statement_timeout: StatementTimeoutOption = None,
    lock_retries: LockRetriesOption = 5,
    as_json: JsonOption = False,
) -> None:
    """Undo applied phases after PHASE (or all of them: `base`), newest first.

    Runs each phase's down script in one transaction with its ledger update. The app's own
    tables and data are never touched.
    """
    url = services.resolve_database_url(_settings())
    timeouts = migrations.Timeouts(lock_timeout, statement_timeout, lock_retries)
    with _progress_bars(transient=True) as progress:
        undone = migrations.rollback(
            url, to=to.value, timeouts=timeouts, progress=_ProgressBars(progress)
        )
    if as_json:
        _print_json({"rolled_back": undone, "to": to.value})
    elif undone:
        stdout.print(f"rolled back: {', '.join(undone)}")
    else:
        stdout.print(f"nothing to roll back: no phase after {to.value} is applied")


@app.command()
def status(as_json: JsonOption = False) -> None:
    """Phases applied and pending, with the counts an operator checks first.

    Shows each phase's state (applied, pending, changed, missing-file), when and how fast it was
    applied, the number of opskit triggers, row counts of the denormalized tables and
    materialized views, the delta rows not yet folded, the instant of the stored trending
    scores, and the refresh queue and refresh log when they exist; each view's
    staleness over the last hour (p50/p95 seconds from the oldest write a refresh made visible
    to the end of that refresh), the live daemons, the latest scheduled job runs and the roles
    given `migrate --grant-to`.
    """
    url = services.resolve_database_url(_settings())
    with connect(url, autocommit=True) as conn:
        state = status_report(conn)
    if as_json:
        _print_json({"database": mask_url(url), **state.as_dict()})
        return
    table = Table(title=f"migrations on {mask_url(url)}")
    for column in ("phase", "state", "applied at", "ms", "by"):
        table.add_column(column)
    for phase in state.phases:
        table.add_row(
            phase.name,
            phase.state,
            f"{phase.applied_at:%Y-%m-%d %H:%M:%S}" if phase.applied_at else "",
            str(phase.duration_ms or ""),
            phase.applied_by or "",
        )
    stdout.print(table)
    stdout.print(f"opskit triggers: {state.opskit_triggers}")
    if state.granted_to:
        roles = ", ".join(
            g["role"] + ("" if g["role_exists"] else " (dropped)") for g in state.granted_to
        )
        stdout.print(f"granted to (migrate --grant-to): {roles}", markup=False)
    for name, count in state.row_counts.items():
        if count is not None:
            stdout.print(f"{name}: {count:,} rows")
    if state.refresh_queue_pending is not None:
        stdout.print(f"refresh queue: {state.refresh_queue_pending} pending")
    if state.pending_deltas is not None:
        deltas = ", ".join(f"{table} {count:,}" for table, count in state.pending_deltas.items())
        stdout.print(f"deltas not yet folded (the daemon folds every second): {deltas}")
    if state.trending_scored_at is not None:
        stdout.print(
            f"trending scored for {state.trending_scored_at:%Y-%m-%d %H:%M:%S} UTC "
            f"({state.trending_age_s:,.0f} s ago)"
        )
    if state.refresh_runs_last_hour is not None:
        runs = ", ".join(f"{k} {v}" for k, v in state.refresh_runs_last_hour.items()) or "none"
        stdout.print(f"refresh runs in the last hour: {runs}")
    for view, staleness in (state.refresh_staleness_last_hour or {}).items():
        stdout.print(
            f"{view}: staleness p50 {staleness['p50_s']:.1f} s, p95 {staleness['p95_s']:.1f} s "
            f"({staleness['runs']} refresh{'' if staleness['runs'] == 1 else 'es'})"
        )
    if state.live_daemons is not None:
        live = ", ".join(d["worker_id"] for d in state.live_daemons) or "none"
        stdout.print(f"live daemons: {live}")
    for run in state.latest_job_runs or []:
        stdout.print(
            f"job {run['job']}: slot {run['scheduled_for']:%Y-%m-%d %H:%M} UTC {run['status']} "
            f"by {run['worker_id']}",
            markup=False,
        )


BackfillTable = Enum(
    "BackfillTable", {name: name for name in backfill.BACKFILL_FUNCTIONS}, type=str
)


@app.command("backfill")
def backfill_command(
    table: Annotated[
        list[BackfillTable] | None,
        typer.Option("--table", help="Relation to recompute (repeatable; default: all three)."),
    ] = None,
    batch_size: Annotated[
        int, typer.Option(min=1, max=1_000_000, help="User ids per batch (one transaction each).")
    ] = 5000,
    as_json: JsonOption = False,
) -> None:
    """Recompute the denormalized relations from the truth, batched, safe while writes go on.

    Each batch of user ids is one transaction; a write racing a batch is neither lost nor
    counted twice. Batches are idempotent: run it again to resume after an interruption.
    """
    url = services.resolve_database_url(_settings())
    with _progress_bars(transient=as_json) as progress:
        bars = _ProgressBars(progress)

        def on_batch(name: str, done: int, total: int) -> None:
            bars.set(f"backfill {name}", done, total)

        results = backfill.backfill(
            url,
            tables=[t.value for t in table] if table else None,
            batch_size=batch_size,
            on_batch=on_batch,
        )
    if as_json:
        _print_json({"results": [r.as_dict() for r in results]})
        return
    for r in results:
        stdout.print(
            f"{r.table}: {r.rows_written:,} rows in {r.batches} batches, {r.seconds:.1f} s"
        )


@app.command("refresh")
def refresh_command(
    views: Annotated[
        list[str] | None, typer.Argument(help="Views to refresh now (default: the due ones).")
    ] = None,
    all_views: Annotated[bool, typer.Option("--all", help="Refresh every view now.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Refresh materialized views now: named ones, --all, or those the queue says are due.

    The same code path as the daemon: per-view and slot locks (never two refreshes of one view,
    at most OPSKIT_REFRESH_WORKERS at once), claim the pending requests, wait out older
    transactions, REFRESH ... CONCURRENTLY, log the run in mv_refresh_log, mark the claimed
    requests done. Exit 1 if a refresh failed.
    """
    settings = _settings()
    url = services.resolve_database_url(settings)
    runs = refresh.refresh(url, settings, views=views or None, all_views=all_views)
    if as_json:
        _print_json({"runs": [run.as_dict() for run in runs]})
    else:
        for run in runs:
            detail = (
                f"{run.duration_ms} ms, {run.requests_done} requests" if run.duration_ms else ""
            )
            stdout.print(
                f"{run.view}: {run.status} {detail} {run.error or ''}".rstrip(), markup=False
            )
        if not runs:
            stdout.print("no view is due")
    if any(run.status == "failed" for run in runs):
        raise typer.Exit(1)


@app.command()
def verify(as_json: JsonOption = False) -> None:
    """Check that the applied phases' objects exist and are valid, and the data is exact.

    Every table, view and function the applied phase files create exists; every trigger is
    enabled; every index is valid; every materialized view is populated and has a plain unique
    index; and each denormalized relation equals its truth query (a full outer join on its keys,
    all in one snapshot), naming the first differing keys. Exit 1 on any failure.
    """
    url = services.resolve_database_url(_settings())
    with connect(url, autocommit=True) as conn:
        verification = verify_database(conn)
    if as_json:
        _print_json(
            {"ok": verification.ok, "checks": [asdict(check) for check in verification.checks]}
        )
    else:
        for check in verification.checks:
            mark = "ok  " if check.ok else "FAIL"
            stdout.print(f"{mark} {check.name}: {check.detail}", markup=False)
        failed = sum(not check.ok for check in verification.checks)
        stdout.print(
            f"{failed} of {len(verification.checks)} checks failed" if failed else "all checks pass"
        )
    if not verification.ok:
        raise typer.Exit(1)


@app.command("bench-writes")
def bench_writes(
    writers: Annotated[
        int, typer.Option(min=1, max=190, help="Concurrent writer connections.")
    ] = 32,
    seconds: Annotated[float, typer.Option(min=1, max=3600, help="Duration of each run.")] = 20,
    hot: Annotated[
        bool, typer.Option("--hot", help="Every writer votes on the one most popular project.")
    ] = False,
    rate: Annotated[
        int | None,
        typer.Option(min=1, help="Fixed arrival rate in votes/s (open model); default: flat out."),
    ] = None,
    scale: Annotated[ScaleName, typer.Option(help="Data seeded into the scratch databases.")] = (
        ScaleName.small  # type: ignore[attr-defined]
    ),
    synchronous_commit: Annotated[
        SynchronousCommit | None,
        typer.Option(
            "--synchronous-commit",
            help="The writers' synchronous_commit; default: the server's (embedded: off).",
        ),
    ] = None,
    repeat: Annotated[
        int, typer.Option(min=1, max=20, help="Alternate the two runs this many times.")
    ] = 1,
    breakdown: Annotated[
        bool,
        typer.Option(
            "--breakdown",
            help="Instead: one session's server CPU per vote write, with the refresh-queue"
            " trigger, the phase-1 triggers or both switched off (what each part costs).",
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Measure what the triggers cost vote writes: no phases vs all phases applied.

    Creates two scratch databases on the server in use (seeded; the second with every phase
    applied), runs the same pgbench vote load (insert / flip / delete) on each, flat out or at
    a fixed --rate, each run starting right after a CHECKPOINT (where the role may), prints
    TPS, p50/p99 latency, deadlocks and WAL bytes per write, and drops both. --repeat alternates
    the runs and reports median ratios with their range (for a shared, noisy machine). Targets
    at 32 writers on the hot key: throughput at least 80% of the no-phase baseline, p99 at most
    1.5x, no deadlock.

    --breakdown attributes the cost instead: it needs the server on this machine, since it
    reads a backend's CPU time, which a loaded machine barely disturbs.
    """
    url = services.resolve_database_url(_settings())
    if breakdown:
        _print_vote_cpu_breakdown(url, scale.value, repeat, as_json)
        return
    load = writebench.WriteLoad(
        writers=writers,
        seconds=seconds,
        hot=hot,
        rate=rate,
        synchronous_commit=synchronous_commit.value if synchronous_commit else None,
    )
    results = writebench.compare_vote_writes(
        url, load, scale=scale.value, repeat=repeat, progress=None if as_json else stderr.log
    )
    comparison = writebench.compare(results)
    ratios = comparison.as_dict()
    if as_json:
        _print_json({"results": [r.as_dict() for r in results], **ratios})
        return
    table = Table(
        title=f"vote writes, {writers} writers, {'hot key' if hot else 'spread keys'}, "
        f"synchronous_commit {results[0].synchronous_commit}"
    )
    for column in (
        "database",
        "tx",
        "TPS",
        "p50 ms",
        "p99 ms",
        "deadlocks",
        "errors",
        "WAL B/write",
        "server CPU µs/write",
    ):
        table.add_column(column, justify="right")
    for r in results:
        table.add_row(
            r.label,
            f"{r.transactions:,}",
            f"{r.tps:,.0f}",
            f"{r.p50_ms:.2f}",
            f"{r.p99_ms:.2f}",
            str(r.deadlocks),
            str(r.other_errors),
            f"{r.wal_bytes_per_write:,.0f}",
            "-" if r.server_cpu_us_per_write is None else f"{r.server_cpu_us_per_write:,.0f}",
        )
    stdout.print(table)
    if not all(r.after_checkpoint for r in results):
        stdout.print(
            "note: this role may not CHECKPOINT, so runs did not start right after one; a"
            " checkpoint inside one run weighs on it alone (grant pg_checkpoint to compare fairly)"
        )
    if comparison.throughput_vs_baseline is None or comparison.p99_vs_baseline is None:
        stdout.print("no baseline run completed a vote: no ratio to report")
        return
    spread = ""
    if repeat > 1 and comparison.throughput_ratio_range and comparison.p99_ratio_range:
        (tps_low, tps_high), (p99_low, p99_high) = (
            comparison.throughput_ratio_range,
            comparison.p99_ratio_range,
        )
        spread = (
            f" (pairs: {tps_low:.0%}-{tps_high:.0%}, median pair"
            f" {comparison.throughput_pair_median:.0%}; x{p99_low:.2f}-x{p99_high:.2f})"
        )
    cpu = (
        f", server CPU per write x{comparison.server_cpu_vs_baseline:.2f}"
        if comparison.server_cpu_vs_baseline
        else ""
    )
    stdout.print(
        f"with phases (medians of {repeat}): {comparison.throughput_vs_baseline:.0%} of baseline"
        f" throughput, p99 x{comparison.p99_vs_baseline:.2f}{spread}{cpu}"
    )


def _print_vote_cpu_breakdown(url: str, scale: str, repeat: int, as_json: bool) -> None:
    runs = writebench.vote_cpu_breakdown(
        url, scale=scale, repeat=repeat, progress=None if as_json else stderr.log
    )
    summary = writebench.breakdown_summary(runs)
    if as_json:
        _print_json({"runs": [r.as_dict() for r in runs], **summary})
        return
    table = Table(title=f"server CPU per vote write, one session, hot key (medians of {repeat})")
    for column in ("variant", "CPU µs/write", "queue rows", "delta rows"):
        table.add_column(column, justify="right")
    for label, cpu_us in summary["median_cpu_us_per_write"].items():
        last = next(r for r in reversed(runs) if r.label == label)
        table.add_row(
            label,
            f"{cpu_us:,.1f}",
            "-" if last.queue_rows is None else f"{last.queue_rows:,}",
            "-" if last.delta_rows is None else f"{last.delta_rows:,}",
        )
    stdout.print(table)
    for part, cpu_us in summary["part_cpu_us_per_write"].items():
        stdout.print(f"{part}: {cpu_us:+,.1f} µs per write")
    ceiling = summary["cpu_bound_throughput_vs_baseline"]
    if ceiling:
        stdout.print(f"a CPU-bound server keeps at most {ceiling:.0%} of its no-phase throughput")


@app.command()
def lint(as_json: JsonOption = False) -> None:
    """Check the migration files for mistakes that hurt production (exit 1 on any).

    Rules: a non-concurrent index build on an app table, CONCURRENTLY inside a transactional
    phase, a file without lock_timeout / statement_timeout, a trigger created after the backfill
    that depends on it, a materialized view without a plain unique index, the clock or random()
    inside a materialized view, a volatile column default, and any statement (down scripts
    included) that drops, empties or alters the app's own tables.
    """
    findings = lint_migrations()
    if as_json:
        _print_json({"ok": not findings, "findings": [asdict(f) for f in findings]})
    else:
        for finding in findings:
            where = f"{finding.file}:{finding.statement}" if finding.statement else finding.file
            stdout.print(f"{where} {finding.rule}: {finding.message}", markup=False)
        stdout.print(f"{len(findings)} problems" if findings else "migration files pass lint")
    if findings:
        raise typer.Exit(1)


# ---------------------------------------------------------------------------- daemon


@app.command("reconcile")
def reconcile_command(
    fix: Annotated[
        bool, typer.Option("--fix", help="Repair the drift found, then re-check it.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Compare Redis and the denormalized tables with the truth; repair them with --fix.

    Checks every denormalized relation against its truth query in one snapshot, every cached
    Redis vote set ({OPSKIT_REDIS_PREFIX}user:*:upvotes) against the votes table, and each
    materialized view's oldest pending refresh request against max wait + one poll. --fix
    recomputes the drifted users' rows, rebuilds the drifted keys and refreshes overdue views.
    The run is recorded in opskit_reconcile_runs. Exit 1 when drift was found (even if fixed).
    """
    settings = _settings()
    outcome = reconcile.reconcile(
        settings,
        services.resolve_database_url(settings),
        services.resolve_redis_url(settings),
        fix=fix,
    )
    if as_json:
        _print_json(outcome.as_dict())
    else:
        for check in outcome.checks:
            repaired = f", fixed {check.fixed}, left {check.remaining}" if outcome.fix else ""
            sample = f" (first: {', '.join(check.sample)})" if check.sample else ""
            source = f", from {check.source_rows:,} source rows" if check.source_rows else ""
            stdout.print(
                f"{check.name}: {check.rows_checked:,} checked{source}, {check.drift} drift"
                f"{repaired}{sample}",
                markup=False,
            )
        speed = ""
        if outcome.relations_seconds and outcome.truth_rows_per_s:
            speed = (
                f"; relations in {outcome.relations_seconds:.2f} s: "
                f"{outcome.truth_rows_per_s:,} truth rows/s, "
                f"{outcome.source_rows_per_s or 0:,} source rows/s"
            )
        stdout.print(f"drift total {outcome.drift_total} in {outcome.seconds:.2f} s{speed}")
    if outcome.drift_total:
        raise typer.Exit(1)


@app.command("scheduler")
def scheduler_command() -> None:
    """Run the daemon until SIGTERM/SIGINT: view refresh, delta folding, nightly reconcile.

    Same as `python scheduler.py`. Every OPSKIT_REFRESH_POLL_S it refreshes the due views (the
    `opskit refresh` code path, at most OPSKIT_REFRESH_WORKERS at once across all daemons),
    folds phase1's delta rows every second, reconciles with --fix on OPSKIT_RECONCILE_CRON (UTC)
    once per slot across all daemons (a missed slot is caught up at start, within 6 hours), and
    writes a heartbeat that `opskit status` lists. Several daemons may run at once. Refuses to
    start (exit 3) when the database or Redis does not answer or phase2 is not applied.
    """
    settings = _settings()
    root_logger = logging.getLogger()
    root_logger.setLevel(min(root_logger.level, logging.INFO))  # a daemon logs what it does
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    outcome = daemon.run(settings, build_scheduler)
    # Exit now, skipping the interpreter's teardown of every imported library (seconds on a busy
    # machine; SIGTERM promises an exit within 10 s). A job thread that outlived the grace period
    # (not clean) dies with the process, which releases its session and locks.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0 if outcome.clean else 1)


# ---------------------------------------------------------------------------- api

ApiMode = Enum("ApiMode", {name: name for name in ("before", "after")}, type=str)


@app.command()
def serve(
    mode: Annotated[
        ApiMode,
        typer.Option(help="before: normalized tables; after: denormalized + views + Redis."),
    ],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8000,
    workers: Annotated[
        int, typer.Option(min=1, max=64, help="Server processes sharing the port.")
    ] = 1,
    pool_size: Annotated[
        int, typer.Option(min=1, max=100, help="Database connections per process.")
    ] = api.DEFAULT_POOL_SIZE,
) -> None:
    """Run the HTTP API (CONTRACT §9) until interrupted, in before or after mode.

    before answers from the app's normalized tables with the joins an app would write; after
    answers from the denormalized relations, the materialized views and the Redis vote cache
    (every phase must be applied). Both give the same JSON on the same data. uvicorn with uvloop
    and httptools; --workers N starts N processes on the same port, each with --pool-size
    connections opened at start. Tokens: `opskit token USER_ID`.
    """
    settings = _settings()
    stderr.print(
        f"opskit API ({mode.value} mode) on http://{host}:{port} "
        f"({workers} worker{'s' if workers > 1 else ''}, pool {pool_size}); Ctrl-C stops it",
        markup=False,
    )
    api.serve(settings, mode.value, host=host, port=port, workers=workers, pool_size=pool_size)


@app.command()
def token(
    user_id: Annotated[int, typer.Argument(min=1, max=auth.MAX_USER_ID, help="The user's id.")],
    ttl: Annotated[
        int, typer.Option(min=1, max=auth.MAX_TTL_S, help="Lifetime in seconds.")
    ] = 86400,
) -> None:
    """Print a bearer token (HS256 JWT, sub = USER_ID) for the API.

    Signed with OPSKIT_JWT_SECRET, else the secret generated once into OPSKIT_HOME/jwt_secret.
    The user is not looked up: a token for a user that does not exist gets 401 from the API.
    Use it as `Authorization: Bearer <token>`.
    """
    typer.echo(auth.token_for_user(_settings(), user_id, ttl))


@app.command("bench-api")
def bench_api(
    scale: Annotated[
        ScaleName | None,
        typer.Option(
            help="Clone a scratch database opskit_benchapi_<scale> on the same server "
            "(seeded on first use, kept for reuse) instead of the configured one."
        ),
    ] = None,
    requests: Annotated[
        int, typer.Option(min=10, max=1_000_000, help="Measured requests per endpoint and mode.")
    ] = 500,
    concurrency: Annotated[
        int, typer.Option(min=1, max=256, help="Concurrent client connections.")
    ] = 4,
    pool_size: Annotated[
        int, typer.Option(min=1, max=100, help="Database connections of each server.")
    ] = 4,
    endpoint: Annotated[
        list[str] | None,
        typer.Option(help="Only this endpoint (repeatable; the floor always runs)."),
    ] = None,
    max_seconds: Annotated[
        float,
        typer.Option(min=1, help="Per endpoint and mode: start no request after this long."),
    ] = 60,
    keep_databases: Annotated[
        bool, typer.Option(help="Keep the two clones <database>_before and <database>_after.")
    ] = False,
    repeat: Annotated[
        int,
        typer.Option(
            min=1,
            max=20,
            help="Measure every endpoint this many rounds; print medians over the rounds.",
        ),
    ] = 1,
    as_json: JsonOption = False,
) -> None:
    """Latency of every API endpoint before and after opskit, against the floor endpoint.

    Clones the seeded database (nobody may be connected to it) into <database>_before (no
    phase) and <database>_after (every phase, views refreshed), then starts `opskit serve`
    three times: before mode on the first clone, before mode on the second ("+indexes": what
    indexes alone buy) and after mode on the second. Each gets the same requests from
    --concurrency connections; prints server p50/p99 (the Server-Timing header), after mode's
    ratio to /api/health/db (targets: p50 <= 2x, p99 <= 3x) and the after/before speed-up
    against the write-up's claims doubled (stats 24x, feed 13x, leaderboards 30x, chains 11x,
    search 20x, vote 80x). Vote requests write to the clones, which are dropped at the end.
    --repeat N measures everything N rounds (the floor first in each) and prints each figure's
    median over the rounds, with the range of the floor ratios (for a shared, noisy machine).
    """
    settings = _settings()
    database_url = services.resolve_database_url(settings)
    redis_url = services.resolve_redis_url(settings)
    log = None if as_json else stderr.log
    if scale is not None:
        database_url = apibench.prepare_scale_database(database_url, scale.value, progress=log)
    result = apibench.bench_api(
        settings,
        database_url,
        redis_url,
        requests=requests,
        concurrency=concurrency,
        pool_size=pool_size,
        endpoints=endpoint,
        budget_s=max_seconds,
        keep_databases=keep_databases,
        repeat=repeat,
        log_dir=settings.home / "bench-api",
        progress=log,
    )
    if as_json:
        _print_json(
            {
                **result.as_dict(),
                "database": mask_url(result.database),
                "databases": {role: mask_url(url) for role, url in result.databases.items()},
            }
        )
        return
    rounds = f", medians of {repeat} rounds" if repeat > 1 else ""
    table = Table(
        title=f"bench-api on clones of {mask_url(result.database)}: {requests} requests per "
        f"endpoint, {concurrency} connections (server ms, Server-Timing{rounds})"
    )
    for column in (
        "endpoint",
        "before p50",
        "before p99",
        "+indexes p50",
        "+indexes p99",
        "after p50",
        "after p99",
        "p50/floor",
        "p99/floor",
        "speed-up",
        "target",
        "requests",
        "errors",
    ):
        table.add_column(column, justify="right")

    def fmt(value, suffix="") -> str:
        return "" if value is None else f"{value:g}{suffix}"

    def ratio(row: dict, key: str) -> str:
        spread = row.get(f"{key}_range")
        if repeat == 1 or not spread:
            return fmt(row[key], "x")
        return f"{fmt(row[key], 'x')} ({spread[0]:g}–{spread[1]:g})"

    for row in result.endpoints:
        target = row["target_speedup"]
        met = row["speedup_target_met"]
        table.add_row(
            row["endpoint"],
            fmt(row["before_p50_ms"]),
            fmt(row["before_p99_ms"]),
            fmt(row["before_indexes_p50_ms"]),
            fmt(row["before_indexes_p99_ms"]),
            fmt(row["after_p50_ms"]),
            fmt(row["after_p99_ms"]),
            ratio(row, "after_p50_vs_floor"),
            ratio(row, "after_p99_vs_floor"),
            fmt(row["speedup_p50"], "x"),
            "" if target is None else f"{target:g}x {'met' if met else 'MISSED'}",
            "/".join(str(count) for count in row["requests"].values()),
            str(row["errors"]),
        )
    stdout.print(table)


# ---------------------------------------------------------------------------- load tests, reports

# opskit.report and opskit.bench pull in pandas and scipy (most of a second): only the verbs that
# need them import them, so every other verb (and the daemon) starts fast.
ReportFormat = Enum("ReportFormat", {name: name for name in ("html", "md")}, type=str)


@app.command("report")
def report_command(
    before_dir: Annotated[
        Path, typer.Argument(help="Result folder of the before runs (`opskit loadtest --out`).")
    ],
    after_dir: Annotated[Path, typer.Argument(help="Result folder of the after runs.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="File to write.")],
    fmt: Annotated[
        ReportFormat,
        typer.Option("--format", help="html: the full report; md: a short summary for a PR."),
    ] = ReportFormat.html,  # type: ignore[attr-defined]
    story: Annotated[
        Path | None,
        typer.Option("--story", help="story.json from `opskit bench`: migration, writes, views."),
    ] = None,
    soak: Annotated[
        Path | None,
        typer.Option("--soak", help="soak.json from `opskit soak --out DIR`: faults and drift."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Compare before and after load-test runs in one self-contained HTML file (or Markdown).

    Per endpoint: medians over runs with distribution-free intervals, speed-up with a bootstrap
    interval over runs, Mann-Whitney U with Holm correction ("~" = no significant change), the
    original write-up's claims beside the measurement, percentile spectra, runs over time,
    flagged runs and the environment; with --soak, a table of what `opskit soak` injected and
    whether everything converged. Both folders must hold the same scenario, model and rate
    (else exit 2); the file is written whole or not at all.
    """
    from opskit import report

    written = report.render(
        before_dir,
        after_dir,
        out,
        story=report.load_story(story) if story else None,
        soak=report.load_soak(soak) if soak else None,
        fmt=fmt.value,
    )
    size = written.stat().st_size
    if as_json:
        _print_json({"output": str(written), "format": fmt.value, "bytes": size})
    else:
        stdout.print(f"wrote {written} ({size / 1024:,.0f} KiB)", markup=False)


ModeName = Enum("ModeName", {name: name for name in loadtest.MODES}, type=str)


@app.command("loadtest")
def loadtest_command(
    mode: Annotated[ModeName, typer.Option(help="The API mode under test (a label with --url).")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="New folder for the results (run-01, ...).")
    ],
    scenario: Annotated[
        str, typer.Option(help="A scenario file of loadtests/: browse, builder or mixed.")
    ] = "mixed",
    rate: Annotated[
        float | None,
        typer.Option(help="Open model: requests/s, sent on schedule whatever the latency."),
    ] = None,
    users: Annotated[
        int | None, typer.Option(help="Closed model: users sending back to back.")
    ] = None,
    spawn_rate: Annotated[
        float | None, typer.Option(help="Closed model: users started per second (default: all).")
    ] = None,
    duration: Annotated[float, typer.Option(help="Measured seconds, after the warm-up.")] = 60,
    warmup: Annotated[
        float, typer.Option(help="Seconds of load first, recorded but left out of the stats.")
    ] = 10,
    repeat: Annotated[int, typer.Option(help="Repetitions, each in a fresh Locust process.")] = 1,
    workers: Annotated[
        int, typer.Option(help="Locust workers under a master (0: one process).")
    ] = 0,
    url: Annotated[
        str | None,
        typer.Option(help="API to load; default: start `opskit serve --mode M` on a free port."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Run a Locust scenario headless against the API and record every request.

    Open model (--rate): requests leave on a fixed schedule, the same for both modes; a request
    sent late because every user was busy keeps its intended time, so the corrected p99 counts
    the wait (no coordinated omission). Closed model (--users): users send back to back. Ids,
    tokens and search terms come from the configured database. Each repetition writes
    OUT/run-NN with meta.json, requests.parquet (every request, full resolution),
    seconds.parquet (achieved vs target rate, errors, generator CPU) and Locust's CSVs. A run
    whose generator CPU exceeds 70% or that missed 95% of the target rate is flagged.
    """
    settings = _settings()
    plan = loadtest.LoadPlan(
        mode=mode.value,
        scenario=scenario,
        duration_s=duration,
        warmup_s=warmup,
        rate=rate,
        users=users,
        spawn_rate=spawn_rate,
        workers=workers,
        repeat=repeat,
    )
    with _run_bars(plan.repeat, transient=as_json) as on_tick:
        result = loadtest.loadtest(
            settings,
            plan,
            out,
            url=url,
            progress=on_tick,
        )
    if as_json:
        _print_json(result.as_dict())
        return
    _print_runs(f"{plan.scenario}, {plan.mode} mode, {result.target_url}", result.runs)
    stdout.print(f"results in {result.out}", markup=False)


@app.command("bench")
def bench_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Report file: .html, or .md.")],
    scale: Annotated[ScaleName, typer.Option(help="Data seeded into the fresh database.")] = (
        ScaleName.small  # type: ignore[attr-defined]
    ),
    rate: Annotated[float, typer.Option(help="Requests/s for both modes (open model).")] = 100,
    duration: Annotated[float, typer.Option(help="Measured seconds per run.")] = 60,
    warmup: Annotated[float, typer.Option(help="Warm-up seconds per run (left out).")] = 10,
    repeat: Annotated[int, typer.Option(help="Runs per mode, before and after alternating.")] = 5,
    scenario: Annotated[str, typer.Option(help="A scenario file of loadtests/.")] = "mixed",
    workers: Annotated[
        int, typer.Option(help="Locust workers under a master (0: one process).")
    ] = 0,
    keep_databases: Annotated[
        bool,
        typer.Option("--keep-databases", help="Keep opskit_bench_before/_after for a look."),
    ] = False,
    skip_write_cost: Annotated[
        bool,
        typer.Option("--skip-write-cost", help="Leave out the vote-write cost (saves a seed)."),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """The whole story in one command: fresh data, before runs, migrate, after runs, report.

    On the configured server: measures the vote-write cost with and without triggers, seeds
    opskit_bench_seed, clones it into opskit_bench_before and opskit_bench_after, migrates the
    after clone (phase timings go into the report) and refreshes its views, then runs the load
    --repeat times per mode, alternating, each run in a fresh Locust process against one API
    server per mode, while `opskit scheduler` runs on the after clone (the views' staleness
    goes into the report). Results land in OUT without its suffix (before/, after/,
    story.json), the report in OUT. The bench databases are dropped at the end.
    """
    from opskit import bench

    settings = _settings()
    plan = bench.BenchPlan(
        scale=scale.value,
        load=loadtest.LoadPlan(
            mode="before",
            scenario=scenario,
            duration_s=duration,
            warmup_s=warmup,
            rate=rate,
            workers=workers,
            repeat=repeat,
        ),
        keep_databases=keep_databases,
        write_cost=not skip_write_cost,
    )
    with _run_bars(repeat, transient=as_json) as on_tick:
        result = bench.bench(
            settings,
            plan,
            out,
            note=None if as_json else stderr.log,
            progress=on_tick,
        )
    if as_json:
        _print_json(result.as_dict())
        return
    for mode, runs in result.runs.items():
        _print_runs(f"{plan.load.scenario}, {mode} mode, {plan.scale} data", runs)
    total = sum(step["seconds"] for step in result.steps)
    stdout.print(f"results in {result.data_dir}, {total:.0f} s in all", markup=False)
    stdout.print(f"report: {result.report}", markup=False)


@contextmanager
def _run_bars(repeat: int, *, transient: bool):
    """A rich bar per run; yields the core's progress callback (mode, run, elapsed, total, CPU)."""
    with _progress_bars(transient=transient) as progress:
        tasks: dict[tuple[str, int], int] = {}

        def on_tick(mode: str, index: int, elapsed: float, total: float, cpu: float) -> None:
            if (mode, index) not in tasks:
                tasks[mode, index] = progress.add_task("", total=total)
            progress.update(
                tasks[mode, index],
                completed=round(elapsed),
                description=f"{mode} run {index}/{repeat}, load generator CPU {cpu:3.0f}%",
            )

        yield on_tick


def _print_runs(title: str, runs: list[loadtest.RunSummary]) -> None:
    target = runs[0].target_rate if runs else None
    rate = f"open model, {target:,.0f} req/s" if target is not None else "closed model"
    table = Table(
        title=f"{title} ({rate})",
        caption="latencies in ms; p99 CO counts from the intended send time",
    )
    for column in ("run", "requests", "errors", "req/s", "p50", "p99", "p99 CO", "CPU %"):
        table.add_column(column, justify="right")
    table.add_column("flags", overflow="fold")
    for run in runs:
        table.add_row(
            str(run.repeat_index),
            f"{run.requests_total:,}",
            f"{run.errors_total:,}",
            f"{run.achieved_rate:,.1f}",
            _ms(run.p50_ms),
            _ms(run.p99_ms),
            _ms(run.p99_corrected_ms),
            "-" if run.generator_cpu_pct is None else f"{run.generator_cpu_pct:.0f}",
            " ".join(run.flags) or "-",
        )
    stdout.print(table)
    for flag in sorted({flag for run in runs for flag in run.flags}):
        flagged = ", ".join(str(run.repeat_index) for run in runs if flag in run.flags)
        stdout.print(f"warning: {flag} (run {flagged}): {loadtest.FLAGS[flag]}", markup=False)


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"


# ---------------------------------------------------------------------------- soak


@app.command("soak")
def soak_command(
    duration: Annotated[
        float, typer.Option(min=1, max=7 * 24 * 3600, help="Seconds of load and faults.")
    ] = 300,
    writers: Annotated[
        int, typer.Option(min=1, max=150, help="Writer threads, each with its own connection.")
    ] = 32,
    faults: Annotated[
        str,
        typer.Option(
            help="all, none, or a comma-separated list of: " + ", ".join(soak.FAULT_KINDS)
        ),
    ] = "all",
    scale: Annotated[
        ScaleName | None, typer.Option(help="Seed and migrate an empty database at this scale.")
    ] = None,
    seed_number: Annotated[
        int, typer.Option("--seed", min=0, help="Seed of the random choices (and of --scale data).")
    ] = 1,
    api_clients: Annotated[
        bool, typer.Option("--api/--no-api", help="Also vote through `opskit serve --mode after`.")
    ] = True,
    out: Annotated[
        Path | None,
        typer.Option(file_okay=False, help="Folder for soak.json and the children's logs."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Run every write path under load while faults are injected, then prove convergence.

    Writer threads run the app's write paths (CONTRACT §5) on the configured, migrated database
    (--scale seeds and migrates an empty one first), API clients vote through `opskit serve
    --mode after` (the Redis vote cache), and the daemon refreshes the views (`python
    scheduler.py` is started unless one is alive). Faults on a schedule: daemon_kill (during a
    refresh, then restart), two_daemons, redis_flush (keys under OPSKIT_REDIS_PREFIX), flushall
    (in `all` only on opskit's embedded Valkey), redis_stop (10 s; embedded Valkey only),
    terminate (writers' backends mid-transaction), trigger_outage (must be detected), rollback
    (5% of transactions). At the end: drain the refresh queue, reconcile, reconcile --fix,
    reconcile. Exit 1 when drift is left, a refresh overlapped, a deadlock or error happened, or
    an outage went undetected.
    """
    settings = _settings()
    options = soak.SoakOptions(
        duration_s=duration,
        writers=writers,
        faults=faults,
        seed=seed_number,
        scale=scale.value if scale else None,
        api=api_clients,
        out_dir=out,
    )
    # SIGTERM stops a soak like Ctrl-C does: its finally blocks re-enable a disabled trigger,
    # restart a stopped Valkey, and stop the daemons and the API server it started.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        outcome = soak.soak(settings, options)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if as_json:
        _print_json(outcome.as_dict())
    else:
        _print_soak(outcome)
    if outcome.problems:
        raise typer.Exit(1)


def _print_soak(outcome: soak.SoakResult) -> None:
    table = Table(title=f"soak: {outcome.duration_s:.0f} s, {outcome.writers} writers")
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [
        ("writes committed", f"{outcome.writes_committed:,}"),
        ("writes rolled back (on purpose)", f"{outcome.writes_rolled_back:,}"),
        ("writes rejected (row gone meanwhile)", f"{outcome.writes_rejected:,}"),
        ("writer connections terminated", f"{outcome.connections_lost:,}"),
        ("API requests / errors", f"{outcome.api_requests:,} / {outcome.api_errors}"),
        ("deadlocks", str(outcome.deadlocks)),
        ("writer errors", str(outcome.writer_errors)),
        *((f"fault {kind}", f"{count:,}") for kind, count in sorted(outcome.faults.items())),
        *((f"fault {kind}", f"skipped: {why}") for kind, why in outcome.faults_skipped.items()),
        ("daemon kills during a refresh", str(outcome.kills_during_refresh)),
        ("trigger outages detected", str(outcome.trigger_outages_detected)),
        (
            "view staleness p50 / p95 / max (s)",
            " / ".join("-" if v is None else f"{v:.2f}" for v in outcome.staleness_s.values()),
        ),
        (
            "refresh runs",
            ", ".join(f"{n} {status}" for status, n in sorted(outcome.refresh_runs.items())) or "0",
        ),
        ("overlapping refreshes of one view", str(outcome.overlapping_refreshes)),
        ("refresh requests left after the drain", f"{outcome.queue_left} ({outcome.drain_s} s)"),
    ]
    for figure, value in rows:
        table.add_row(figure, value)
    stdout.print(table)
    drift = Table(title="drift per reconcile check")
    for column in ("check", "before --fix", "fixed", "after --fix"):
        drift.add_column(column, justify="left" if column == "check" else "right")
    for name, before in outcome.drift_before_fix.items():
        drift.add_row(
            name,
            f"{before:,}",
            f"{outcome.drift_fixed.get(name, 0):,}",
            f"{outcome.drift_after_fix.get(name, 0):,}",
        )
    stdout.print(drift)
    for error in outcome.first_errors:
        stdout.print(f"error seen: {error}", markup=False)
    for detail in outcome.deadlock_details:
        stdout.print(f"deadlock: {detail}", markup=False)
    verdict = "; ".join(outcome.problems) or "converged: nothing that must be 0 is not"
    stdout.print(f"{verdict} (details: {outcome.out_dir})", markup=False)


def main() -> None:
    app()
