"""The `opskit` command line: parse arguments, call one core function, render its result.

One module per part registers its verbs on the one Typer app of `common`, in the order `--help`
lists them. Those modules import only light things at the top; a verb imports the core modules it
needs when it runs, so each verb pays only for itself at start-up.
"""

from __future__ import annotations

import importlib

from opskit.cli.common import app

VERB_MODULES = ("servers", "engine", "api", "benchmarking", "loadtests")
for _module in VERB_MODULES:
    importlib.import_module(f"opskit.cli.{_module}")

__all__ = ["app", "main"]


def main() -> None:
    app()
