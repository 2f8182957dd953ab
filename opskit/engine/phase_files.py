"""The phase files: where they are, their order, their statements and what those statements lock.

Phases are `<name>.sql` (up) and `<name>.down.sql` (down) of the checkout's `migrations/` folder,
shipped inside the package as `opskit.engine.phases`, applied in the order of PHASES.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable

import sqlparse

from opskit.core.errors import EnvironmentProblem

# The phase files: the checkout's `migrations/` folder, shipped as this package (pyproject.toml).
MIGRATIONS_DIR: Traversable = resources.files("opskit.engine.phases")
PHASES: tuple[str, ...] = (
    "phase0_cleanup",
    "phase1_denormalized_tables",
    "phase1_backfill_data",
    "phase2_materialized_views",
    "phase3_search_and_forums",
    "phase4_critical_indexes",
)
BASE = "base"
NO_TRANSACTION = "-- opskit: no-transaction"
# A statement of a no-transaction phase marked `-- opskit: sessions N` runs on N connections at
# once (it is written to share its work between them, e.g. batches claimed with SKIP LOCKED).
_SESSIONS = re.compile(r"^\s*--\s*opskit:\s*sessions\s+(\d+)\s*$", re.MULTILINE)

_LOCK = re.compile(
    r"^\s*LOCK\s+(?:TABLE\s+)?(?:ONLY\s+)?(.+?)"
    r"(?:\s+IN\s+([A-Z ]+?)\s+MODE)?(?:\s+NOWAIT)?\s*;?\s*$",
    re.IGNORECASE | re.DOTALL,
)
# PostgreSQL's table lock modes, weakest first: a mode conflicts with every mode that an earlier
# one conflicts with, and more (SHARE and SHARE UPDATE EXCLUSIVE aside, which opskit never mixes).
LOCK_MODES: tuple[str, ...] = (
    "ACCESS SHARE",
    "ROW SHARE",
    "ROW EXCLUSIVE",
    "SHARE UPDATE EXCLUSIVE",
    "SHARE",
    "SHARE ROW EXCLUSIVE",
    "EXCLUSIVE",
    "ACCESS EXCLUSIVE",
)
# What the app's statements wait for while a table is held in that mode.
LOCK_BLOCKS = {
    "SHARE": "writes",
    "SHARE ROW EXCLUSIVE": "writes",
    "EXCLUSIVE": "writes and row locks",
    "ACCESS EXCLUSIVE": "reads and writes",
}
_CREATED = re.compile(
    r"^\s*CREATE\s+(?:OR\s+REPLACE\s+)?(?:UNIQUE\s+)?"
    r"(TABLE|VIEW|MATERIALIZED\s+VIEW|INDEX|(?:CONSTRAINT\s+)?TRIGGER|FUNCTION)\s+"
    r"(?:CONCURRENTLY\s+)?(?:IF\s+NOT\s+EXISTS\s+)?(?:public\.)?\"?(\w+)",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class PhaseFile:
    name: str
    path: Traversable
    down_path: Traversable | None
    text: str
    checksum: str

    @property
    def transactional(self) -> bool:
        return NO_TRANSACTION not in self.text.split("\n", 3)[0:3]

    def statements(self) -> list[str]:
        return split_statements(self.text)


@dataclass(frozen=True)
class LockStatement:
    """A `LOCK TABLE` of a phase file: the tables it takes together, in its order, and the mode."""

    tables: tuple[str, ...]
    mode: str


@dataclass(frozen=True)
class PlannedStatement:
    phase: str
    number: int
    sql: str
    lock: str
    blocks: str


def statement_sessions(statement: str) -> int:
    """The number of connections `statement` runs on at once (its `-- opskit: sessions N`)."""
    match = _SESSIONS.search(statement)
    return max(1, int(match.group(1))) if match else 1


def split_statements(text: str) -> list[str]:
    """The SQL statements of a file, comments kept, comment-only pieces dropped."""
    return [
        statement.strip()
        for statement in sqlparse.split(text)
        if sqlparse.format(statement, strip_comments=True).strip()
    ]


def load_phases(directory: Traversable = MIGRATIONS_DIR) -> list[PhaseFile]:
    """The phase files in `directory`, in the order of PHASES; an unknown .sql file is an error."""
    if not directory.is_dir():
        raise EnvironmentProblem(
            f"migrations folder {directory} is missing",
            hint="reinstall opskit: its phase files are gone",
        )
    known = set(PHASES)
    for path in directory.iterdir():
        if not path.name.endswith(".sql"):
            continue
        name = path.name.removesuffix(".sql").removesuffix(".down")
        if name not in known:
            raise EnvironmentProblem(
                f"unknown migration file {path.name} in {directory}",
                hint=f"phase files are named after the phases: {', '.join(PHASES)}",
            )
    phases = []
    for name in PHASES:
        path = directory / f"{name}.sql"
        if not path.is_file():
            continue
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as err:
            raise EnvironmentProblem(f"cannot read migration file {path}: {err}") from err
        down = directory / f"{name}.down.sql"
        phases.append(
            PhaseFile(
                name=name,
                path=path,
                down_path=down if down.is_file() else None,
                text=text,
                checksum=hashlib.sha256(text.encode()).hexdigest(),
            )
        )
    return phases


def created_objects(phases: Iterable[PhaseFile]) -> list[tuple[str, str]]:
    """(kind, name) of every object the phase files create, in file order."""
    objects: list[tuple[str, str]] = []
    for phase in phases:
        for statement in phase.statements():
            match = _CREATED.match(sqlparse.format(statement, strip_comments=True))
            if match:
                kind = " ".join(match.group(1).lower().split()).removeprefix("constraint ")
                if (kind, match.group(2).lower()) not in objects:
                    objects.append((kind, match.group(2).lower()))
    return objects


def lock_statement(statement: str) -> LockStatement | None:
    """The tables and mode of a `LOCK TABLE` statement; None for any other statement."""
    match = _LOCK.match(sqlparse.format(statement, strip_comments=True).strip())
    if not match:
        return None
    mode = " ".join((match.group(2) or "ACCESS EXCLUSIVE").upper().split())
    tables = tuple(name.strip().strip('"').lower() for name in match.group(1).split(","))
    return LockStatement(tables, mode)


def locked_section_start(statements: Sequence[str]) -> int | None:
    """Index of the first `LOCK TABLE` statement: the locked section runs from there to commit."""
    return next((i for i, s in enumerate(statements) if lock_statement(s)), None)


def section_locks(statements: Sequence[str]) -> LockStatement | None:
    """Every table the LOCK statements of a script take, in order, and the strongest mode."""
    locks = [lock for lock in map(lock_statement, statements) if lock]
    if not locks:
        return None
    tables = tuple(dict.fromkeys(table for lock in locks for table in lock.tables))
    return LockStatement(tables, max((lock.mode for lock in locks), key=mode_rank))


def mode_rank(mode: str) -> int:
    """Strength of a table lock mode (an unknown one, which PostgreSQL refuses, ranks above all)."""
    return LOCK_MODES.index(mode) if mode in LOCK_MODES else len(LOCK_MODES)


def describe_lock(statement: str) -> tuple[str, str]:
    """The strongest lock a statement takes and what that lock blocks, for `--dry-run`."""
    if lock := lock_statement(statement):
        return lock.mode, LOCK_BLOCKS.get(lock.mode, "nothing the app does")
    text = " ".join(sqlparse.format(statement, strip_comments=True).split()).upper()
    rules: list[tuple[str, str, str]] = [
        (
            r"^CREATE (UNIQUE )?INDEX CONCURRENTLY",
            "SHARE UPDATE EXCLUSIVE",
            "nothing (only DDL, VACUUM)",
        ),
        (r"^CREATE (UNIQUE )?INDEX", "SHARE", "writes"),
        (r"^DROP INDEX CONCURRENTLY", "SHARE UPDATE EXCLUSIVE", "nothing (only DDL, VACUUM)"),
        (r"^REFRESH MATERIALIZED VIEW CONCURRENTLY", "EXCLUSIVE", "other refreshes (not reads)"),
        (r"^REFRESH MATERIALIZED VIEW", "ACCESS EXCLUSIVE", "reads and writes of the view"),
        (r"^CREATE (OR REPLACE )?(CONSTRAINT )?TRIGGER", "SHARE ROW EXCLUSIVE", "writes"),
        (r"^(DROP|ALTER) TRIGGER", "ACCESS EXCLUSIVE", "reads and writes"),
        (r"^ALTER TABLE .* (ENABLE|DISABLE) TRIGGER", "SHARE ROW EXCLUSIVE", "writes"),
        (
            r"^(ALTER|DROP) (TABLE|VIEW|MATERIALIZED VIEW|INDEX)",
            "ACCESS EXCLUSIVE",
            "reads and writes",
        ),
        (r"^TRUNCATE", "ACCESS EXCLUSIVE", "reads and writes"),
        (r"^(INSERT|UPDATE|DELETE|MERGE)", "ROW EXCLUSIVE", "nothing (row locks only)"),
        (r"^CREATE (MATERIALIZED VIEW|TABLE .* AS )", "ACCESS SHARE on sources", "nothing"),
    ]
    for pattern, lock, blocks in rules:
        if re.search(pattern, text):
            return lock, blocks
    return "none on existing tables", "nothing"
