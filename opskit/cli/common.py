"""The `opskit` command line: parse arguments, call one core function, render its result.

Errors from the core arrive as OpskitError and leave as one line on stderr (plus a hint) and the
exit code of docs/interface.md §2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from enum import Enum
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from typer.core import TyperGroup

from opskit import __version__
from opskit.benchmarking.scales import SCALES
from opskit.core.errors import OpskitError
from opskit.core.settings import ENVIRONMENT_HELP, Settings

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
                print_json(
                    {"error": error.message, "hint": error.hint, "exit_code": int(error.exit_code)}
                )
            typer.echo(f"error: {error.message}", err=True)
            if error.hint:
                typer.echo(f"hint: {error.hint}", err=True)
            raise typer.Exit(int(error.exit_code)) from None


app = typer.Typer(
    cls=OpskitGroup,
    help="Denormalize a PostgreSQL + Redis web backend and prove the speed-up.\n\n"
    + ENVIRONMENT_HELP
    + "\n\nExit codes: 0 success, 1 a problem found (drift, failed check, refused migration),"
    " 2 bad usage or input, 3 environment error (cannot connect, server missing). Every verb,"
    " option and --json shape: docs/interface.md in the project's repository.",
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


def load_settings() -> Settings:
    return Settings.from_env()


def print_json(payload: object) -> None:
    sys.stdout.write(json.dumps(payload, default=str) + "\n")


JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]


class _Bars(Progress):
    """Progress bars that leave nothing behind when transient or when no bar was ever shown."""

    def stop(self) -> None:
        if self.tasks and not self.live.transient:
            super().stop()
        else:  # Progress.stop would print an empty line on a non-terminal stderr
            self.live.transient = True
            self.live.stop()


def progress_bars(transient: bool) -> Progress:
    return _Bars(
        TextColumn("{task.description:<32}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=stderr,
        transient=transient,
    )


class ProgressBars:
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


ScaleName = Enum("ScaleName", {name: name for name in SCALES}, type=str)
