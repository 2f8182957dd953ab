"""Verbs of load tests and reports: loadtest, capacity, report, bench (the whole story)."""

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
from opskit.core.settings import mask_url

if TYPE_CHECKING:
    from opskit.benchmarking import capacity, loadtest

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
    with_capacity: Annotated[
        bool,
        typer.Option(
            "--capacity",
            help="Then ramp each mode's users until the SLO breaks (`opskit capacity`).",
        ),
    ] = False,
    capacity_users_max: Annotated[
        int, typer.Option(help="With --capacity: the last step's users.")
    ] = 5000,
    capacity_step: Annotated[
        int, typer.Option(help="With --capacity: users added per step.")
    ] = 250,
    capacity_step_seconds: Annotated[
        float, typer.Option(help="With --capacity: seconds each step is held.")
    ] = 30,
    as_json: JsonOption = False,
) -> None:
    """The whole story in one command: fresh data, before runs, migrate, after runs, report.

    On the configured server: measures the vote-write cost with and without triggers, seeds
    opskit_bench_seed, clones it into opskit_bench_before and opskit_bench_after, migrates the
    after clone (phase timings go into the report) and refreshes its views, then runs the load
    --repeat times per mode, alternating, each run in a fresh Locust process against one API
    server per mode, while `opskit scheduler` runs on the after clone (the views' staleness
    goes into the report). With --capacity, each mode's users are then ramped (think time 1-5 s,
    SLO p99 200 ms, each mode with an API of 2 workers) and the report gets a capacity section
    with the after views' staleness during the ramp. Results land in OUT without its suffix
    (before/, after/, story.json), the report in OUT. The bench databases are dropped at the end.
    """
    from opskit.benchmarking import loadtest, story

    settings = load_settings()
    ramp = None
    if with_capacity:
        ramp = capacity_plan(
            "after",
            scenario,
            capacity_users_max,
            capacity_step,
            capacity_step_seconds,
            "1-5",
            200,
            2,
            2,
        )
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
        ramp=ramp,
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


@app.command("capacity")
def capacity_command(
    mode: Annotated[ModeName, typer.Option(help="The API mode under test (a label with --url).")],
    url: Annotated[
        str | None,
        typer.Option(
            help="API to load (serving the configured database); default: start `opskit serve "
            "--mode M --workers W` with a pool that fits max_connections."
        ),
    ] = None,
    scenario: Annotated[str, typer.Option(help="A scenario file of loadtests/.")] = "mixed",
    users_max: Annotated[int, typer.Option(help="The last step's users.")] = 5000,
    step: Annotated[int, typer.Option(help="Users added at each step.")] = 250,
    step_seconds: Annotated[float, typer.Option(help="Seconds each step is held.")] = 30,
    think: Annotated[
        str, typer.Option(help="Think time after each answer: uniform MIN-MAX seconds.")
    ] = "1-5",
    slo_p99: Annotated[
        float, typer.Option(help="The SLO: p99 latency bound in ms (and no error).")
    ] = 200,
    workers: Annotated[
        int, typer.Option(help="Locust workers under a master (0: one process).")
    ] = 2,
    server_workers: Annotated[
        int, typer.Option(help="`opskit serve --workers` of the API started without --url.")
    ] = 2,
    as_json: JsonOption = False,
) -> None:
    """Ramp users with think time against the API until a step breaks the p99 SLO.

    Each step adds --step users (each waits a --think time after every answer) and is held
    --step-seconds; its first seconds (the new users' start, at most half the step) are not
    measured. Per step: users, achieved req/s, p50 and p99 of the answers (and p99 counted from
    the end of the think time, which adds the load generator's own lag), errors, the load
    generator's CPU (% of its worker processes' cores) and flags: generator over 70%, or fewer
    than 95% of users / (mean think + latency) req/s sent. The ramp stops after the first step
    with p99 over --slo-p99 or any error; held users = the largest unflagged step that held.
    Exit 0 when the ramp ran, whatever it held.
    """
    from opskit.benchmarking import capacity

    settings = load_settings()
    plan = capacity_plan(
        mode.value, scenario, users_max, step, step_seconds, think, slo_p99, workers, server_workers
    )
    with capacity_bar(transient=as_json) as on_tick:
        result = capacity.capacity(settings, plan, url=url, progress=on_tick)
    if as_json:
        print_json(result.as_dict())
        return
    table = Table(
        title=f"{plan.scenario}, {plan.mode} mode, {mask_url(result.target_url)}, think "
        f"{plan.think_min_s:g}-{plan.think_max_s:g} s, SLO p99 {plan.slo_p99_ms:g} ms",
        caption="latencies in ms; p99 +lag counts from the end of the think time",
    )
    for column in ("users", "req/s", "expected", "p50", "p99", "p99 +lag", "errors", "gen CPU %"):
        table.add_column(column, justify="right")
    table.add_column("flags", overflow="fold")
    for s in result.steps:
        table.add_row(
            f"{s.users:,}",
            f"{s.rps:,.1f}",
            f"{s.expected_rps:,.1f}",
            format_ms(s.p50_ms),
            format_ms(s.p99_ms),
            format_ms(s.p99_corrected_ms),
            f"{s.errors:,}",
            "-" if s.generator_cpu is None else f"{s.generator_cpu:.0f}",
            " ".join(s.flags) or "-",
            style=None if s.held else "red",
        )
    stdout.print(table)
    for flag in sorted({flag for s in result.steps for flag in s.flags}):
        stdout.print(f"warning: {flag}: {capacity.FLAGS[flag]}", markup=False)
    stdout.print(f"held {result.held_users:,} users", markup=False)


def capacity_plan(
    mode: str,
    scenario: str,
    users_max: int,
    step: int,
    step_seconds: float,
    think: str,
    slo_p99: float,
    workers: int,
    server_workers: int,
) -> capacity.CapacityPlan:
    """The ramp the options describe, checked (BadInput, exit 2, before anything runs)."""
    from opskit.benchmarking import capacity

    think_min, think_max = capacity.parse_think(think)
    plan = capacity.CapacityPlan(
        mode=mode,
        scenario=scenario,
        users_max=users_max,
        step=step,
        step_s=step_seconds,
        think_min_s=think_min,
        think_max_s=think_max,
        slo_p99_ms=slo_p99,
        workers=workers,
        server_workers=server_workers,
    )
    plan.validate()
    return plan


@contextmanager
def capacity_bar(*, transient: bool):
    """One rich bar over the ramp's steps; yields the core's progress callback."""
    with progress_bars(transient=transient) as progress:
        task = None

        def on_tick(tick: capacity.StepProgress) -> None:
            nonlocal task
            if task is None:
                task = progress.add_task("", total=tick.steps * tick.step_s)
            last = tick.last
            done = (
                "" if last is None else f"; {last.users:,} users: p99 {format_ms(last.p99_ms)} ms"
            )
            progress.update(
                task,
                completed=round(tick.index * tick.step_s + tick.elapsed_s),
                description=f"step {tick.index + 1}/{tick.steps}: {tick.users:,} users{done}",
            )

        yield on_tick


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
