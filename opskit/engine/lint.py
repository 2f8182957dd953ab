"""`opskit lint`: static checks of the project's migration files.

Each rule catches a mistake that works on a developer's laptop and hurts a production database:
a blocking index build, a trigger that misses rows written during the backfill, a view that cannot
be refreshed concurrently, and so on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.resources.abc import Traversable

import sqlparse

from opskit.core.schema import APP_TABLES
from opskit.engine.migrations import SET_TIMEOUT
from opskit.engine.phase_files import (
    MIGRATIONS_DIR,
    NO_TRANSACTION,
    PHASES,
    PhaseFile,
    load_phases,
    lock_statement,
    mode_rank,
    split_statements,
)

BACKFILL_PHASE = "phase1_backfill_data"
_APP = "|".join(APP_TABLES)
_IDENT = r"\"?(\w+)\"?"

_INDEX = re.compile(
    rf"^CREATE\s+(?:UNIQUE\s+)?INDEX\s+(CONCURRENTLY\s+)?(?:IF\s+NOT\s+EXISTS\s+)?(?:{_IDENT}\s+)?"
    rf"ON\s+(?:ONLY\s+)?(?:public\.)?{_IDENT}\s*(?:USING\s+\w+\s*)?\((.*?)\)\s*(INCLUDE\s*\(.*?\)\s*)?(WHERE\s+.*)?;?$",
    re.IGNORECASE | re.DOTALL,
)
_MATVIEW = re.compile(
    rf"^CREATE\s+MATERIALIZED\s+VIEW\s+(?:IF\s+NOT\s+EXISTS\s+)?(?:public\.)?{_IDENT}(.*)$",
    re.IGNORECASE | re.DOTALL,
)
_FUNCTION = re.compile(
    rf"^CREATE\s+(?:OR\s+REPLACE\s+)?FUNCTION\s+(?:public\.)?{_IDENT}\s*\((.*)$",
    re.IGNORECASE | re.DOTALL,
)
_TRIGGER = re.compile(
    rf"^CREATE\s+(?:OR\s+REPLACE\s+)?(?:CONSTRAINT\s+)?TRIGGER\s+{_IDENT}.*?\bON\s+(?:public\.)?{_IDENT}"
    rf".*?EXECUTE\s+(?:FUNCTION|PROCEDURE)\s+(?:public\.)?{_IDENT}\s*\(",
    re.IGNORECASE | re.DOTALL,
)
_WRITES = re.compile(
    r"\b(?:INSERT\s+INTO|UPDATE|DELETE\s+FROM|MERGE\s+INTO)\s+(?:public\.)?\"?(\w+)", re.IGNORECASE
)
_TIME_OR_RANDOM = re.compile(
    r"\b(now\s*\(|current_timestamp|current_date|current_time|localtimestamp|localtime|"
    r"clock_timestamp|statement_timestamp|transaction_timestamp|timeofday|random\s*\()",
    re.IGNORECASE,
)
_VOLATILE_DEFAULT = re.compile(
    r"\bDEFAULT\s+(clock_timestamp|random|gen_random_uuid|uuid_generate_v\d\w*|timeofday|txid_current)\s*\(",
    re.IGNORECASE,
)
_APP_DATA_CHANGE = re.compile(
    "|".join(
        (
            rf"^DROP\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:[\w\"]+\s*,\s*)*\"?(?:{_APP})\b(?!_)",
            rf"^TRUNCATE\s+(?:TABLE\s+)?(?:[\w\"]+\s*,\s*)*\"?(?:{_APP})\b(?!_)",
            rf"^DELETE\s+FROM\s+\"?(?:{_APP})\b(?!_)",
            rf"^ALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?\"?(?:{_APP})\b(?!_)\"?\s+DROP\s+COLUMN",
        )
    ),
    re.IGNORECASE,
)


# Locks a statement takes on an existing table that block the app's writes (SHARE or stronger):
# (pattern, mode), the first that matches wins. Group 1 is the table; for DROP INDEX it is the
# index, whose table comes from the phase file that creates it.
_TABLE = r"(?:ONLY\s+)?(?:public\.)?\"?(\w+)\"?"
_STATEMENT_LOCKS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE | re.DOTALL), mode)
    for pattern, mode in (
        (
            rf"^CREATE\s+(?:OR\s+REPLACE\s+)?(?:CONSTRAINT\s+)?TRIGGER\s.*?\bON\s+{_TABLE}",
            "SHARE ROW EXCLUSIVE",
        ),
        (rf"^DROP\s+TRIGGER\s+(?:IF\s+EXISTS\s+)?\S+\s+ON\s+{_TABLE}", "ACCESS EXCLUSIVE"),
        (
            rf"^ALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?{_TABLE}\s+(?:ENABLE|DISABLE)\s+TRIGGER",
            "SHARE ROW EXCLUSIVE",
        ),
        (rf"^ALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?{_TABLE}", "ACCESS EXCLUSIVE"),
        (rf"^CREATE\s+(?:UNIQUE\s+)?INDEX\s+(?!CONCURRENTLY).*?\bON\s+{_TABLE}", "SHARE"),
    )
)
_DROP_INDEX = re.compile(
    rf"^DROP\s+INDEX\s+(?!CONCURRENTLY)(?:IF\s+EXISTS\s+)?{_TABLE}", re.IGNORECASE
)
_REFERENCES = re.compile(rf"\bREFERENCES\s+{_TABLE}", re.IGNORECASE)  # a new foreign key


# A statement may accept a rule on purpose, saying why next to it:
#   -- opskit: allow time-in-matview (each refresh scores trending for its own instant)
_ALLOW = re.compile(r"--\s*opskit:\s*allow\s+([\w-]+)", re.IGNORECASE)


@dataclass(frozen=True)
class Finding:
    file: str
    statement: int
    rule: str
    message: str


def _clean(statement: str) -> str:
    return sqlparse.format(statement, strip_comments=True).strip()


def lint(directory: Traversable = MIGRATIONS_DIR) -> list[Finding]:
    """Every rule violation in the phase files (and down files) of `directory`."""
    phases = load_phases(directory)
    findings: list[Finding] = []
    functions: dict[str, set[str]] = {}  # function name -> relations its body writes
    triggers: list[tuple[int, str, int, str, str]] = []  # (position, file, no, trigger, function)
    matviews: dict[str, tuple[str, int, str]] = {}
    unique_plain_indexes: set[str] = set()
    backfill_position: int | None = None
    backfilled: set[str] = set()

    allowed: set[tuple[str, int, str]] = set()  # (file, statement number, rule)
    index_tables = {
        match.group(2).lower(): match.group(3).lower()
        for phase in phases
        for statement in phase.statements()
        if (match := _INDEX.match(_clean(statement))) and match.group(2)
    }
    for phase in phases:
        file = phase.path.name
        raw_statements = phase.statements()
        statements = [_clean(s) for s in raw_statements]
        findings += _timeouts(phase, statements)
        findings += _lock_rules(file, statements, phase.transactional, index_tables)
        for number, raw in enumerate(raw_statements, start=1):
            allowed |= {(file, number, rule.lower()) for rule in _ALLOW.findall(raw)}
        for number, text in enumerate(statements, start=1):
            position = (PHASES.index(phase.name) * 100_000) + number
            findings += _statement_rules(phase, file, number, text)
            if phase.name == BACKFILL_PHASE:
                backfill_position = position if backfill_position is None else backfill_position
                backfilled |= {name.lower() for name in _WRITES.findall(text)}
            if match := _FUNCTION.match(text):
                functions[match.group(1).lower()] = {w.lower() for w in _WRITES.findall(text)}
            if match := _TRIGGER.match(text):
                triggers.append((position, file, number, match.group(1), match.group(3).lower()))
            if match := _MATVIEW.match(text):
                matviews[match.group(1).lower()] = (file, number, match.group(2))
            if (match := _INDEX.match(text)) and re.match(r"^CREATE\s+UNIQUE", text, re.IGNORECASE):
                columns = [c.strip().strip('"') for c in match.group(4).split(",")]
                if not match.group(6) and all(re.fullmatch(r"\w+", c) for c in columns):
                    unique_plain_indexes.add(match.group(3).lower())
        if phase.down_path is not None:
            down_text = phase.down_path.read_text()
            down = [_clean(s) for s in split_statements(down_text)]
            down_transactional = NO_TRANSACTION not in down_text.split("\n", 3)[0:3]
            findings += _lock_rules(phase.down_path.name, down, down_transactional, index_tables)
            for number, text in enumerate(down, start=1):
                if _APP_DATA_CHANGE.match(text):
                    findings.append(
                        Finding(
                            phase.down_path.name,
                            number,
                            "touches-app-data",
                            "a down script must never drop, empty or alter app tables",
                        )
                    )

    for name, (file, number, body) in matviews.items():
        if name not in unique_plain_indexes:
            findings.append(
                Finding(
                    file,
                    number,
                    "matview-without-unique-index",
                    f"{name} has no plain unique index, so it cannot be refreshed CONCURRENTLY",
                )
            )
        if _TIME_OR_RANDOM.search(body):
            findings.append(
                Finding(
                    file,
                    number,
                    "time-in-matview",
                    f"{name} uses the clock or random(): its rows change at "
                    "every refresh; apply time at read time",
                )
            )
    if backfill_position is not None:
        for position, file, number, trigger, function in triggers:
            if position > backfill_position and functions.get(function, set()) & backfilled:
                findings.append(
                    Finding(
                        file,
                        number,
                        "trigger-after-backfill",
                        f"trigger {trigger} maintains what {BACKFILL_PHASE} fills "
                        "but is created after it: writes during the backfill "
                        "would be lost",
                    )
                )
    return [f for f in findings if (f.file, f.statement, f.rule) not in allowed]


def strong_app_locks(statement: str, index_tables: dict[str, str]) -> list[tuple[str, str]]:
    """(app table, mode) of each lock a statement takes that blocks the app's writes."""
    found = [(match.group(1), "SHARE ROW EXCLUSIVE") for match in _REFERENCES.finditer(statement)]
    if match := _DROP_INDEX.match(statement):
        found.append((index_tables.get(match.group(1).lower(), ""), "ACCESS EXCLUSIVE"))
    else:
        found += next(
            (
                [(m.group(1), mode)]
                for pattern, mode in _STATEMENT_LOCKS
                if (m := pattern.match(statement))
            ),
            [],
        )
    return [(table.lower(), mode) for table, mode in found if table.lower() in APP_TABLES]


def _lock_rules(
    file: str, statements: list[str], transactional: bool, index_tables: dict[str, str]
) -> list[Finding]:
    """The locked section (docs/migrations.md): strong locks on app tables are taken up front,
    together (consecutive LOCK statements), parents before children, in the strongest mode any
    later statement needs, and only where a transaction holds them. A statement of a
    no-transaction file that locks one app table is its own short section."""
    findings = []
    held: dict[str, str] = {}  # app table -> mode the LOCK statements took
    previous_was_lock = False
    for number, text in enumerate(statements, start=1):
        lock = lock_statement(text)
        if lock:
            app = [table for table in lock.tables if table in APP_TABLES]
            if not transactional:
                findings.append(
                    Finding(
                        file,
                        number,
                        "lock-outside-transaction",
                        "LOCK in a no-transaction file ends with its statement: it guards nothing",
                    )
                )
            if held and not previous_was_lock:
                findings.append(
                    Finding(
                        file,
                        number,
                        "locks-not-together",
                        "every LOCK of the locked section comes first, one after the other, so the "
                        "section takes its locks together before it changes anything",
                    )
                )
            if app != sorted(app, key=APP_TABLES.index):
                findings.append(
                    Finding(
                        file,
                        number,
                        "lock-order",
                        f"lock app tables parents before children ({', '.join(APP_TABLES)}), the "
                        "one order every phase uses, so two scripts never wait for each other's "
                        "tables the other way round",
                    )
                )
            for table in app:
                if mode_rank(lock.mode) > mode_rank(held.get(table, "ACCESS SHARE")):
                    held[table] = lock.mode
            previous_was_lock = True
            continue
        previous_was_lock = False
        strong = strong_app_locks(text, index_tables)
        if not transactional and len({table for table, _mode in strong}) <= 1:
            # A statement of a no-transaction file commits alone: it holds nothing while it
            # waits for its one table, so it cannot deadlock with the app, and the app waits
            # for it at most its lock_timeout.
            continue
        for table, mode in strong:
            if table not in held:
                findings.append(
                    Finding(
                        file,
                        number,
                        "strong-lock-not-up-front",
                        f"takes {mode} on {table} (blocks the app's writes) outside a locked "
                        f"section: start the section with LOCK TABLE ... IN {mode} MODE "
                        f"{'before it' if transactional else 'in a transactional file'}",
                    )
                )
            elif mode_rank(held[table]) < mode_rank(mode):
                findings.append(
                    Finding(
                        file,
                        number,
                        "lock-upgrade",
                        f"needs {mode} on {table} but the LOCK took {held[table]}: an upgrade "
                        "inside the transaction can deadlock with the app; "
                        f"LOCK it IN {mode} MODE up front",
                    )
                )
    return findings


def _timeouts(phase: PhaseFile, statements: list[str]) -> list[Finding]:
    found = {m.group(1).lower() for s in statements if (m := SET_TIMEOUT.match(s))}
    return [
        Finding(
            phase.path.name,
            0,
            "missing-timeout",
            f"the file never sets {name}: a blocked statement could queue every query behind it",
        )
        for name in ("lock_timeout", "statement_timeout")
        if name not in found
    ]


def _statement_rules(phase: PhaseFile, file: str, number: int, text: str) -> list[Finding]:
    findings = []
    index = _INDEX.match(text)
    if index and not index.group(1) and index.group(3).lower() in APP_TABLES:
        findings.append(
            Finding(
                file,
                number,
                "blocking-index-on-app-table",
                f"CREATE INDEX on {index.group(3)} without CONCURRENTLY blocks "
                "its writes for the whole build",
            )
        )
    if (
        phase.transactional
        and re.search(r"\bCONCURRENTLY\b", text, re.IGNORECASE)
        and not re.match(r"^REFRESH", text, re.IGNORECASE)
    ):
        findings.append(
            Finding(
                file,
                number,
                "concurrently-in-transaction",
                "CONCURRENTLY cannot run in a transaction: mark the file "
                "`-- opskit: no-transaction`",
            )
        )
    if _VOLATILE_DEFAULT.search(text):
        findings.append(
            Finding(
                file,
                number,
                "volatile-default",
                "a volatile DEFAULT rewrites the table when added to existing "
                "rows and differs per row; use a stable default or none",
            )
        )
    if _APP_DATA_CHANGE.match(text):
        findings.append(
            Finding(
                file,
                number,
                "touches-app-data",
                "migrations must never drop, empty or alter app tables' data",
            )
        )
    return findings
