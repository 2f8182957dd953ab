"""Verbs of the denormalization engine: what an operator runs against a database."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import asdict
from enum import Enum
from typing import Annotated

import typer
from rich.table import Table

from opskit.cli.common import (
    JsonOption,
    ProgressBars,
    app,
    load_settings,
    print_json,
    progress_bars,
    stdout,
)
from opskit.core.settings import mask_url
from opskit.engine import backfill, migrations

# ---------------------------------------------------------------------------- migrations

PhaseName = Enum("PhaseName", {name: name for name in migrations.PHASES}, type=str)
RollbackTarget = Enum(
    "RollbackTarget", {name: name for name in (migrations.BASE, *migrations.PHASES)}, type=str
)
LockTimeoutOption = Annotated[
    str | None,
    typer.Option(
        help="lock_timeout per statement (PostgreSQL units, e.g. 400ms); default: the "
        "phase file's SET, else 5s. Also the budget of a phase's locked section (its LOCK TABLE "
        "to its commit), which must be below the server's deadlock_timeout."
    ),
]
StatementTimeoutOption = Annotated[
    str | None,
    typer.Option(help="statement_timeout per statement; default: the phase file's SET, else 1h."),
]
LockRetriesOption = Annotated[
    int,
    typer.Option(
        min=0, max=100, help="Retries after a lock timeout, with doubling, jittered backoff."
    ),
]


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
    """Apply the pending migration phases in order (docs/interface.md §4).

    Each phase runs in one transaction and is recorded in the ledger (opskit_migrations) in that
    transaction; phases marked `-- opskit: no-transaction` (concurrent index builds) run
    statement by statement and resume after a crash. Two migrates never interleave: the second
    waits (or exits 1 with --no-wait). An applied phase whose file changed is refused (exit 1).
    The triggers run with the writer's privileges: if the app connects as another role than
    this one, name it with --grant-to. Strong locks on app tables are taken together, up front,
    and given up (then retried) before the app's transactions could be chosen as deadlock
    victims; --dry-run shows per phase the locks taken together and how long they were held
    last time.
    """
    from opskit.core import servers

    url = servers.resolve_database_url(load_settings())
    timeouts = migrations.Timeouts(lock_timeout, statement_timeout, lock_retries)
    with progress_bars(transient=as_json or dry_run) as progress:
        result = migrations.migrate(
            url,
            to=to.value if to else None,
            dry_run=dry_run,
            allow_changed=allow_changed,
            wait=not no_wait,
            timeouts=timeouts,
            progress=ProgressBars(progress),
            grant_to=grant_to or (),
        )
    if as_json:
        print_json(
            {
                "database": mask_url(url),
                "dry_run": result.dry_run,
                "applied": result.applied,
                "already_applied": result.already_applied,
                "granted_to": result.granted,
                "plan": [asdict(step) for step in result.plan],
                "lock_groups": [asdict(group) for group in result.lock_groups],
            }
        )
        return
    if dry_run:
        groups = {group.phase: group for group in result.lock_groups}
        for number, step in enumerate(result.plan):
            first_line = " ".join(step.sql.split())[:90]
            stdout.print(
                f"{step.phase} #{step.number}: {first_line}\n"
                f"    lock: {step.lock}; blocks: {step.blocks}",
                markup=False,
            )
            last_of_phase = (
                number + 1 == len(result.plan) or result.plan[number + 1].phase != step.phase
            )
            if last_of_phase and step.phase in groups:
                stdout.print(
                    f"{step.phase}: {groups[step.phase].describe()}", markup=False, soft_wrap=True
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
    from opskit.core import servers

    url = servers.resolve_database_url(load_settings())
    timeouts = migrations.Timeouts(lock_timeout, statement_timeout, lock_retries)
    with progress_bars(transient=True) as progress:
        undone = migrations.rollback(
            url, to=to.value, timeouts=timeouts, progress=ProgressBars(progress)
        )
    if as_json:
        print_json({"rolled_back": undone, "to": to.value})
    elif undone:
        stdout.print(f"rolled back: {', '.join(undone)}")
    else:
        stdout.print(f"nothing to roll back: no phase after {to.value} is applied")


@app.command()
def status(as_json: JsonOption = False) -> None:
    """Phases applied and pending, with the counts an operator checks first.

    Shows each phase's state (applied, pending, changed, missing-file), when and how fast it was
    applied, the number of opskit triggers, row counts of the denormalized tables and the
    maintained views, the delta rows not yet folded, the instant of the stored trending scores,
    the changes not applied yet (per view while a view catches up), the batches of the last hour
    and each view's staleness over it (p50/p95/max seconds from the oldest change a batch made
    visible to the end of that batch), the live daemons, the latest scheduled job runs, the
    roles given `migrate --grant-to`, the touched keys waiting for `reconcile --changed` and its
    last run and share of consistent rows over the last hour.
    """
    from opskit.core import servers
    from opskit.core.db import connect
    from opskit.engine.status import status_report

    url = servers.resolve_database_url(load_settings())
    with connect(url, autocommit=True) as conn:
        state = status_report(conn)
    if as_json:
        print_json({"database": mask_url(url), **state.as_dict()})
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
        stdout.print(f"view changes not applied yet: {state.refresh_queue_pending:,}")
    for view, pending in (state.pending_by_view or {}).items():
        stdout.print(
            f"{view}: {pending['pending_changes']:,} changes pending since "
            f"{pending['oldest_pending_at']:%H:%M:%S}"
        )
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
        stdout.print(f"view batches in the last hour: {runs}")
    for view, staleness in (state.refresh_staleness_last_hour or {}).items():
        stdout.print(
            f"{view}: staleness p50 {staleness['p50_s']:.2f} s, p95 {staleness['p95_s']:.2f} s, "
            f"max {staleness['max_s']:.2f} s ({staleness['batches']:,} "
            f"batch{'' if staleness['batches'] == 1 else 'es'})"
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
    if state.touched_keys_pending is not None:
        stdout.print(
            f"touched keys waiting for `reconcile --changed`: {state.touched_keys_pending:,}"
        )
    changed = state.reconcile_changed
    if changed and changed["last_run_at"] is not None:
        share = changed["consistent_share_last_hour"]
        stdout.print(
            f"reconcile --changed: last at {changed['last_run_at']:%Y-%m-%d %H:%M:%S} UTC "
            f"({changed['last_keys_checked']:,} keys); last hour: {changed['runs_last_hour']} "
            f"runs, {changed['keys_checked_last_hour']:,} keys, "
            + (f"{share:.4%} of the rows checked consistent" if share is not None else "no rows"),
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
    from opskit.core import servers
    from opskit.engine import backfill

    url = servers.resolve_database_url(load_settings())
    with progress_bars(transient=as_json) as progress:
        bars = ProgressBars(progress)

        def on_batch(name: str, done: int, total: int) -> None:
            bars.set(f"backfill {name}", done, total)

        results = backfill.backfill(
            url,
            tables=[t.value for t in table] if table else None,
            batch_size=batch_size,
            on_batch=on_batch,
        )
    if as_json:
        print_json({"results": [r.as_dict() for r in results]})
        return
    for r in results:
        stdout.print(
            f"{r.table}: {r.rows_written:,} rows in {r.batches} batches, {r.seconds:.1f} s"
        )


@app.command("refresh")
def refresh_command(
    views: Annotated[
        list[str] | None,
        typer.Argument(help="Views to bring up to date (default: those with pending changes)."),
    ] = None,
    all_views: Annotated[bool, typer.Option("--all", help="Every view.")] = False,
    full: Annotated[
        bool, typer.Option("--full", help="Rebuild from scratch (the named views, else all).")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Apply the views' pending changes now: named ones, --all, or those with changes.

    The daemon's code path: route the change log, then per view (its lock: never two workers
    on one view; at most OPSKIT_REFRESH_WORKERS at once) apply the pending changes in bounded
    batches, one transaction each, recomputing only the keys they touched; every batch is logged
    in mv_refresh_log. --full rebuilds a view from its definition instead (bootstrap, repair).
    Exit 1 if a batch or build failed.
    """
    from opskit.core import servers
    from opskit.engine import refresh

    settings = load_settings()
    url = servers.resolve_database_url(settings)
    runs = refresh.refresh(url, settings, views=views or None, all_views=all_views, full=full)
    if as_json:
        print_json({"runs": [run.as_dict() for run in runs]})
    else:
        for run in runs:
            detail = ""
            if run.duration_ms is not None:
                detail = (
                    f"{run.kind} in {run.duration_ms} ms: {run.changes:,} changes, "
                    f"{run.keys:,} keys, {run.batches} batch{'' if run.batches == 1 else 'es'}"
                )
            stdout.print(
                f"{run.view}: {run.status} {detail} {run.error or ''}".rstrip(), markup=False
            )
        if not runs:
            stdout.print("no view has changes to apply")
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
    from opskit.core import servers
    from opskit.core.db import connect
    from opskit.engine.verify import verify as verify_database

    url = servers.resolve_database_url(load_settings())
    with connect(url, autocommit=True) as conn:
        verification = verify_database(conn)
    if as_json:
        print_json(
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


@app.command()
def lint(as_json: JsonOption = False) -> None:
    """Check the migration files for mistakes that hurt production (exit 1 on any).

    Rules: a non-concurrent index build on an app table, CONCURRENTLY inside a transactional
    phase, a file without lock_timeout / statement_timeout, a trigger created after the backfill
    that depends on it, a materialized view without a plain unique index, the clock or random()
    inside a materialized view, a volatile column default, and any statement (down scripts
    included) that drops, empties or alters the app's own tables. Locked sections: a lock that
    blocks the app's writes taken outside the script's up-front LOCK TABLE, or stronger than
    it (an upgrade), LOCKs not in the one table order (parents first) or not together, a LOCK
    in a no-transaction file.
    """
    from opskit.engine.lint import lint as lint_migrations

    findings = lint_migrations()
    if as_json:
        print_json({"ok": not findings, "findings": [asdict(f) for f in findings]})
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
    changed: Annotated[
        bool,
        typer.Option(
            "--changed", help="Check only the keys touched since the last check (not every row)."
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Compare Redis and the denormalized tables with the truth; repair them with --fix.

    Checks every denormalized relation against its truth query in one snapshot, every cached
    Redis vote set ({OPSKIT_REDIS_PREFIX}user:*:upvotes) against the votes table, and each
    materialized view's oldest pending refresh request against max wait + one poll. --changed
    checks only the users, conversations, cached sets and view keys touched since the last
    --changed check (what the daemon runs every OPSKIT_RECONCILE_CHANGED_S). --fix recomputes
    the drifted users' rows, rebuilds the drifted keys and brings the views up to date. The run
    is recorded in opskit_reconcile_runs. Exit 1 when drift was found (even if fixed).
    """
    from opskit.core import servers
    from opskit.engine import changed as changed_keys
    from opskit.engine import reconcile

    settings = load_settings()
    check = changed_keys.reconcile_changed if changed else reconcile.reconcile
    outcome = check(
        settings,
        servers.resolve_database_url(settings),
        servers.resolve_redis_url(settings),
        fix=fix,
    )
    if as_json:
        print_json(outcome.as_dict())
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
                f"{outcome.truth_rows_per_s:,} truth rows/s"
            )
            if outcome.source_rows_per_s:
                speed += f", {outcome.source_rows_per_s:,} source rows/s"
        keys = f" over {outcome.keys_checked:,} touched keys" if outcome.changed else ""
        stdout.print(f"drift total {outcome.drift_total}{keys} in {outcome.seconds:.2f} s{speed}")
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
    from opskit.engine import daemon
    from opskit.engine.scheduler import build_scheduler

    settings = load_settings()
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
