"""The `opskit` command line: parse arguments, call one core function, render its result.

Errors from the core arrive as OpskitError and leave as one line on stderr (plus a hint) and the
exit code of CONTRACT §2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from typer.core import TyperGroup

from opskit import __version__, backfill, migrations, refresh, seed, services, writebench
from opskit.db import connect
from opskit.errors import OpskitError
from opskit.lint import lint as lint_migrations
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
        try:
            return super().invoke(ctx)
        except OpskitError as error:
            if isinstance(ctx.obj, CliState) and ctx.obj.debug:
                raise
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


def _progress_bars(transient: bool) -> Progress:
    return Progress(
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
        )
    if as_json:
        _print_json(
            {
                "database": mask_url(url),
                "dry_run": result.dry_run,
                "applied": result.applied,
                "already_applied": result.already_applied,
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
    materialized views, and the refresh queue and refresh log when they exist.
    """
    url = services.resolve_database_url(_settings())
    with connect(url, autocommit=True) as conn:
        report = status_report(conn)
    if as_json:
        _print_json({"database": mask_url(url), **report.as_dict()})
        return
    table = Table(title=f"migrations on {mask_url(url)}")
    for column in ("phase", "state", "applied at", "ms", "by"):
        table.add_column(column)
    for phase in report.phases:
        table.add_row(
            phase.name,
            phase.state,
            f"{phase.applied_at:%Y-%m-%d %H:%M:%S}" if phase.applied_at else "",
            str(phase.duration_ms or ""),
            phase.applied_by or "",
        )
    stdout.print(table)
    stdout.print(f"opskit triggers: {report.opskit_triggers}")
    for name, count in report.row_counts.items():
        if count is not None:
            stdout.print(f"{name}: {count:,} rows")
    if report.refresh_queue_pending is not None:
        stdout.print(f"refresh queue: {report.refresh_queue_pending} pending")
    if report.refresh_runs_last_hour is not None:
        runs = ", ".join(f"{k} {v}" for k, v in report.refresh_runs_last_hour.items()) or "none"
        stdout.print(f"refresh runs in the last hour: {runs}")


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
        report = verify_database(conn)
    if as_json:
        _print_json({"ok": report.ok, "checks": [asdict(check) for check in report.checks]})
    else:
        for check in report.checks:
            mark = "ok  " if check.ok else "FAIL"
            stdout.print(f"{mark} {check.name}: {check.detail}", markup=False)
        failed = sum(not check.ok for check in report.checks)
        stdout.print(
            f"{failed} of {len(report.checks)} checks failed" if failed else "all checks pass"
        )
    if not report.ok:
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
    as_json: JsonOption = False,
) -> None:
    """Measure what the triggers cost vote writes: no phases vs all phases applied.

    Creates two scratch databases on the server in use (seeded; the second with every phase
    applied), runs the same pgbench vote load (insert / flip / delete) on each, flat out or at
    a fixed --rate, prints TPS, p50/p99 latency, deadlocks and WAL bytes per write, and drops
    both. Targets at 32 writers on the hot
    key: throughput at least 80% of the no-phase baseline, p99 at most 1.5x, no deadlock.
    """
    url = services.resolve_database_url(_settings())
    load = writebench.WriteLoad(writers=writers, seconds=seconds, hot=hot, rate=rate)
    results = writebench.compare_vote_writes(
        url, load, scale=scale.value, progress=None if as_json else stderr.log
    )
    base, phased = results
    ratios = {
        "throughput_vs_baseline": round(phased.tps / base.tps, 3) if base.tps else None,
        "p99_vs_baseline": round(phased.p99_ms / base.p99_ms, 3) if base.p99_ms else None,
    }
    if as_json:
        _print_json({"results": [r.as_dict() for r in results], **ratios})
        return
    table = Table(title=f"vote writes, {writers} writers, {'hot key' if hot else 'spread keys'}")
    for column in (
        "database",
        "tx",
        "TPS",
        "p50 ms",
        "p99 ms",
        "deadlocks",
        "errors",
        "WAL B/write",
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
        )
    stdout.print(table)
    stdout.print(
        f"with phases: {ratios['throughput_vs_baseline']:.0%} of baseline throughput, "
        f"p99 x{ratios['p99_vs_baseline']:.2f}"
    )


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


# ---------------------------------------------------------------------------- api


# ---------------------------------------------------------------------------- load tests, reports


def main() -> None:
    app()
