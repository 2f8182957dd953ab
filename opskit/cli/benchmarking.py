"""Verbs of benchmarking: data, write cost, API latency, soak."""

from __future__ import annotations

import signal
from dataclasses import asdict
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from opskit.benchmarking import soak
from opskit.benchmarking.scales import MAX_SEED
from opskit.cli.common import (
    JsonOption,
    ProgressBars,
    ScaleName,
    app,
    load_settings,
    print_json,
    progress_bars,
    stderr,
    stdout,
)
from opskit.core.settings import mask_url

# ---------------------------------------------------------------------------- seed

SynchronousCommit = Enum("SynchronousCommit", {name: name for name in ("on", "off")}, type=str)


@app.command("seed")
def seed_command(
    scale: Annotated[
        ScaleName, typer.Option(help="Data size: tiny (tests), small, medium or large.")
    ],
    seed_value: Annotated[
        int,
        typer.Option("--seed", min=0, max=MAX_SEED, help="Random seed: same seed, same data."),
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
    from opskit.benchmarking import seed
    from opskit.core import servers

    settings = load_settings()
    url = servers.resolve_database_url(settings)
    with progress_bars(transient=as_json) as progress:
        result = seed.seed_database(
            url, scale.value, seed_value, force=force, progress=ProgressBars(progress)
        )
    if as_json:
        print_json(
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
            help="Instead: one session's server CPU per vote write, with the change-log"
            " triggers, the phase-1 triggers or both switched off (what each part costs).",
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
    from opskit.benchmarking import write_cost
    from opskit.core import servers

    url = servers.resolve_database_url(load_settings())
    if breakdown:
        _print_vote_cpu_breakdown(url, scale.value, repeat, as_json)
        return
    load = write_cost.WriteLoad(
        writers=writers,
        seconds=seconds,
        hot=hot,
        rate=rate,
        synchronous_commit=synchronous_commit.value if synchronous_commit else None,
    )
    results = write_cost.compare_vote_writes(
        url, load, scale=scale.value, repeat=repeat, progress=None if as_json else stderr.log
    )
    comparison = write_cost.compare(results)
    ratios = comparison.as_dict()
    if as_json:
        print_json({"results": [r.as_dict() for r in results], **ratios})
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
    from opskit.benchmarking import write_cost

    runs = write_cost.vote_cpu_breakdown(
        url, scale=scale, repeat=repeat, progress=None if as_json else stderr.log
    )
    summary = write_cost.breakdown_summary(runs)
    if as_json:
        print_json({"runs": [r.as_dict() for r in runs], **summary})
        return
    table = Table(title=f"server CPU per vote write, one session, hot key (medians of {repeat})")
    for column in ("variant", "CPU µs/write", "change-log rows", "delta rows"):
        table.add_column(column, justify="right")
    for label, cpu_us in summary["median_cpu_us_per_write"].items():
        last = next(r for r in reversed(runs) if r.label == label)
        table.add_row(
            label,
            f"{cpu_us:,.1f}",
            "-" if last.log_rows is None else f"{last.log_rows:,}",
            "-" if last.delta_rows is None else f"{last.delta_rows:,}",
        )
    stdout.print(table)
    for part, cpu_us in summary["part_cpu_us_per_write"].items():
        stdout.print(f"{part}: {cpu_us:+,.1f} µs per write")
    ceiling = summary["cpu_bound_throughput_vs_baseline"]
    if ceiling:
        stdout.print(f"a CPU-bound server keeps at most {ceiling:.0%} of its no-phase throughput")


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
    search 20x, vote 80x). `search` asks for whole title words, `search_typo` for one-edit typos
    of title words of 6+ letters, whose recall in after mode is printed too. Vote requests
    write to the clones, which are dropped at the end.
    --repeat N measures everything N rounds (the floor first in each) and prints each figure's
    median over the rounds, with the range of the floor ratios (for a shared, noisy machine).
    """
    from opskit.benchmarking import api_latency
    from opskit.core import servers

    settings = load_settings()
    database_url = servers.resolve_database_url(settings)
    redis_url = servers.resolve_redis_url(settings)
    log = None if as_json else stderr.log
    if scale is not None:
        database_url = api_latency.prepare_scale_database(database_url, scale.value, progress=log)
    result = api_latency.bench_api(
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
        print_json(
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
    if result.search_recall:
        found = result.search_recall
        stdout.print(
            f"search_typo recall (after mode, page 1 holds a project whose title has the intended "
            f"word): {found['found']}/{found['typos']} = {found['recall']:.1%}; noise "
            f"(page-1 items without the word in title or subtitle) {found['noise']:.1%}"
        )


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

    Writer threads run the app's write paths (docs/interface.md §5) on the configured, migrated
    database (--scale seeds and migrates an empty one first), API clients vote through `opskit
    serve --mode after` (the Redis vote cache), and the daemon refreshes the views (`python
    scheduler.py` is started unless one is alive). Faults on a schedule: daemon_kill (during a
    refresh, then restart), two_daemons, redis_flush (keys under OPSKIT_REDIS_PREFIX), flushall
    (in `all` only on opskit's embedded Valkey), redis_stop (10 s; embedded Valkey only),
    terminate (writers' backends mid-transaction), trigger_outage (must be detected), rollback
    (5% of transactions). At the end: drain the refresh queue, reconcile, reconcile --fix,
    reconcile. Exit 1 when drift is left, a refresh overlapped, a deadlock or error happened, or
    an outage went undetected.
    """
    from opskit.benchmarking import soak

    settings = load_settings()
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
        print_json(outcome.as_dict())
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
        *(
            (f"  {view}", " / ".join(f"{v:.2f}" for v in figures.values()))
            for view, figures in outcome.staleness_by_view_s.items()
        ),
        (
            "view batches",
            ", ".join(f"{n} {status}" for status, n in sorted(outcome.refresh_runs.items())) or "0",
        ),
        ("overlapping batches of one view", str(outcome.overlapping_refreshes)),
        ("changes unapplied after the drain", f"{outcome.queue_left} ({outcome.drain_s} s)"),
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
