"""The error tree and exit codes every verb shares (docs/interface.md §2).

Each `OpskitError` subclass carries its exit code; its docstring is the default message.
Core modules raise these; only the CLI turns them into a line on stderr and an exit code.
"""

from __future__ import annotations

from enum import IntEnum


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (driver errors run to several lines)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else repr(error)


class ExitCode(IntEnum):
    OK = 0
    PROBLEM_FOUND = 1  # the command ran and found a problem it reports (drift, refusal, ...)
    BAD_INPUT = 2  # bad usage or input
    ENVIRONMENT = 3  # cannot connect, server missing, port taken


class OpskitError(Exception):
    """opskit failed."""

    exit_code: ExitCode = ExitCode.PROBLEM_FOUND

    def __init__(self, message: str | None = None, *, hint: str | None = None) -> None:
        self.message = message or (self.__doc__ or "").strip()
        self.hint = hint
        super().__init__(self.message)


class ProblemFound(OpskitError):
    """The command ran and found a problem."""

    exit_code = ExitCode.PROBLEM_FOUND


class BadInput(OpskitError):
    """Bad usage or input."""

    exit_code = ExitCode.BAD_INPUT


class ConfigError(BadInput):
    """An OPSKIT_* environment variable has an invalid value."""


class EnvironmentProblem(OpskitError):
    """The environment is not usable."""

    exit_code = ExitCode.ENVIRONMENT


class NoDatabase(EnvironmentProblem):
    """no database: set OPSKIT_DATABASE_URL or run `opskit up`"""


class NoRedis(EnvironmentProblem):
    """no Redis: set OPSKIT_REDIS_URL or run `opskit up`"""


class ConnectFailed(EnvironmentProblem):
    """Cannot connect to the server."""


class ServerStartFailed(EnvironmentProblem):
    """An embedded server did not start."""


class SchemaMissing(EnvironmentProblem):
    """the database has no opskit app schema: run `opskit seed --scale tiny` first"""


class DatabaseNotEmpty(ProblemFound):
    """the database already holds app data: pass --force to wipe the app tables and seed again"""


class DatabaseError(EnvironmentProblem):
    """The database refused a statement; the transaction was rolled back."""
