"""Verbs of load tests and reports: loadtest, report, bench (the whole story)."""

from __future__ import annotations

from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from opskit.app.endpoints import MODES
from opskit.cli.common import (
    JsonOption,
    ScaleName,
    app,
    load_settings,
    print_json,
    progress_bars,
    stderr,
    stdout,
)

if TYPE_CHECKING:
    from opskit.benchmarking import loadtest

# ---------------------------------------------------------------------------- load tests, reports

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
    from opskit.benchmarking import report

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
        print_json({"output": str(written), "format": fmt.value, "bytes": size})
    else:
        stdout.print(f"wrote {written} ({size / 1024:,.0f} KiB)", markup=False)


ModeName = Enum("ModeName", {name: name for name in MODES}, type=str)


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
    from opskit.benchmarking import loadtest

    settings = load_settings()
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
    with run_bars(plan.repeat, transient=as_json) as on_tick:
        result = loadtest.loadtest(
            settings,
            plan,
            out,
            url=url,
            progress=on_tick,
        )
    if as_json:
        print_json(result.as_dict())
        return
    print_runs(f"{plan.scenario}, {plan.mode} mode, {result.target_url}", result.runs)
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
    from opskit.benchmarking import loadtest, story

    settings = load_settings()
    plan = story.BenchPlan(
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
    with run_bars(repeat, transient=as_json) as on_tick:
        result = story.bench(
            settings,
            plan,
            out,
            note=None if as_json else stderr.log,
            progress=on_tick,
        )
    if as_json:
        print_json(result.as_dict())
        return
    for mode, runs in result.runs.items():
        print_runs(f"{plan.load.scenario}, {mode} mode, {plan.scale} data", runs)
    total = sum(step["seconds"] for step in result.steps)
    stdout.print(f"results in {result.data_dir}, {total:.0f} s in all", markup=False)
    stdout.print(f"report: {result.report}", markup=False)


@contextmanager
def run_bars(repeat: int, *, transient: bool):
    """A rich bar per run; yields the core's progress callback (mode, run, elapsed, total, CPU)."""
    with progress_bars(transient=transient) as progress:
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


def print_runs(title: str, runs: list[loadtest.RunSummary]) -> None:
    from opskit.benchmarking import loadtest

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
            format_ms(run.p50_ms),
            format_ms(run.p99_ms),
            format_ms(run.p99_corrected_ms),
            "-" if run.generator_cpu_pct is None else f"{run.generator_cpu_pct:.0f}",
            " ".join(run.flags) or "-",
        )
    stdout.print(table)
    for flag in sorted({flag for run in runs for flag in run.flags}):
        flagged = ", ".join(str(run.repeat_index) for run in runs if flag in run.flags)
        stdout.print(f"warning: {flag} (run {flagged}): {loadtest.FLAGS[flag]}", markup=False)


def format_ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"
