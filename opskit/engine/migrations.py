"""The phased migration runner: ledger, checksums, a session lock, timeouts, resume, rollback.

Phases are `migrations/<name>.sql` (up) and `migrations/<name>.down.sql` (down), applied in the
order of docs/interface.md §4. A phase runs in one transaction and is recorded in that same
transaction, unless its file starts with `-- opskit: no-transaction` (concurrent index builds):
then it runs statement by statement, records each finished statement, and a crashed run resumes
after the last one recorded.
"""

from __future__ import annotations

import getpass
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from importlib.resources.abc import Traversable
from typing import Protocol

import psycopg
import sqlparse

from opskit import __version__
from opskit.core.db import connect
from opskit.core.errors import BadInput, DatabaseError, ProblemFound, first_line
from opskit.core.schema import require_base_schema
from opskit.engine.grants import grant, plan_grants, record_grantees, require_roles
from opskit.engine.locked_section import (
    LockedSection,
    LockGroup,
    SectionFailed,
    lock_groups,
    lock_runs,
)
from opskit.engine.phase_files import (
    BASE,
    MIGRATIONS_DIR,
    NO_TRANSACTION,
    PHASES,
    PhaseFile,
    PlannedStatement,
    describe_lock,
    load_phases,
    locked_section_start,
    split_statements,
    statement_sessions,
)
from opskit.sql import queries

LOCK_SPACE = 0x6F70736B  # "opsk"
MIGRATE_LOCK = 1
WAIT_POLL_S = 0.5

SET_TIMEOUT = re.compile(
    r"^\s*SET\s+(?:SESSION\s+|LOCAL\s+)?(lock_timeout|statement_timeout)\s*(?:=|TO)\s*'?([^';]*)'?\s*;?\s*$",
    re.IGNORECASE,
)
_LOCK_CONFLICTS = (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected)
_CONCURRENT_INDEX = re.compile(
    r"^\s*CREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+(?:IF\s+NOT\s+EXISTS\s+)?(\"?[\w.]+\"?)",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Timeouts:
    """Per-statement limits; None means the phase file's own `SET` (or the default) applies."""

    lock_timeout: str | None = None
    statement_timeout: str | None = None
    lock_retries: int = 5
    backoff_s: float = 1.0

    default_lock_timeout = "5s"
    default_statement_timeout = "1h"


@dataclass(frozen=True)
class LedgerRow:
    name: str
    checksum: str
    applied_at: datetime
    duration_ms: int
    applied_by: str
    opskit_version: str


@dataclass
class MigrateResult:
    applied: list[dict] = field(default_factory=list)
    already_applied: list[str] = field(default_factory=list)
    plan: list[PlannedStatement] = field(default_factory=list)
    lock_groups: list[LockGroup] = field(default_factory=list)  # dry run: per pending phase
    dry_run: bool = False
    granted: list[str] = field(default_factory=list)  # roles given opskit's relations


class MigrateProgress(Protocol):
    def phase_started(self, phase: str, statements: int) -> None: ...
    def statement_finished(self, phase: str) -> None: ...
    def index_build(self, index: str, blocks_done: int, blocks_total: int) -> None: ...
    def notice(self, message: str) -> None: ...


class _Silent:
    def phase_started(self, phase: str, statements: int) -> None:
        pass

    def statement_finished(self, phase: str) -> None:
        pass

    def index_build(self, index: str, blocks_done: int, blocks_total: int) -> None:
        pass

    def notice(self, message: str) -> None:
        pass


@contextmanager
def migration_lock(
    url: str, *, wait: bool, progress: MigrateProgress
) -> Iterator[psycopg.Connection]:
    """Hold the session-level migrate lock on its own connection for the whole run.

    A session lock (not a transaction lock) on a separate connection never deadlocks with
    CREATE INDEX CONCURRENTLY, which waits for every older transaction to end. A second run
    waits by trying again every WAIT_POLL_S, not in one blocking statement: that statement
    would be such an older transaction, and the first run's concurrent index build would wait
    for it while it waits for the first run.
    """
    sql = queries("migrations.sql")
    key = {"space": LOCK_SPACE, "key": MIGRATE_LOCK}
    with connect(url, autocommit=True) as lock_conn:
        if not lock_conn.execute(sql["try_lock"], key).fetchone()[0]:
            holder = lock_conn.execute(sql["lock_holder"], key).fetchone()
            who = f" (backend pid {holder[0]})" if holder else ""
            if not wait:
                raise ProblemFound(
                    f"another opskit migrate is running{who}",
                    hint="wait for it, or run again without --no-wait to queue behind it",
                )
            progress.notice(f"waiting for another opskit migrate to finish{who}")
            while not lock_conn.execute(sql["try_lock"], key).fetchone()[0]:
                time.sleep(WAIT_POLL_S)
        try:
            yield lock_conn
        finally:
            if not lock_conn.closed:
                lock_conn.execute(sql["unlock"], key)


# ---------------------------------------------------------------------------- ledger


def _ensure_ledger(conn: psycopg.Connection) -> None:
    with conn.transaction():
        conn.execute(queries("migrations.sql")["create_ledger"])


def read_ledger(conn: psycopg.Connection) -> dict[str, LedgerRow]:
    sql = queries("migrations.sql")
    if not conn.execute(sql["ledger_exists"]).fetchone()[0]:
        return {}
    return {row[0]: LedgerRow(*row) for row in conn.execute(sql["applied_phases"])}


def _check_ledger(
    ledger: dict[str, LedgerRow], phases: list[PhaseFile], allow_changed: bool
) -> None:
    files = {phase.name: phase for phase in phases}
    for name, row in sorted(ledger.items(), key=lambda item: _phase_index(item[0])):
        phase = files.get(name)
        if phase is None:
            raise ProblemFound(
                f"phase {name} is applied but migrations/{name}.sql is missing",
                hint="restore the file from version control",
            )
        if row.checksum != phase.checksum and not allow_changed:
            # The earliest changed phase: rebuilding from it applies the new files.
            before = PHASES[_phase_index(name) - 1] if _phase_index(name) > 0 else BASE
            raise ProblemFound(
                f"{phase.path.name} changed after it was applied: "
                f"ledger sha256 {row.checksum[:12]}…, file sha256 {phase.checksum[:12]}…",
                hint=f"to apply the new file, rebuild from it: `opskit rollback --to {before} "
                "&& opskit migrate` (the app's data stays); else restore the applied file, or "
                "pass --allow-changed if the database already matches it",
            )


def _applied_by() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _phase_index(name: str) -> int:
    if name == BASE:
        return -1
    try:
        return PHASES.index(name)
    except ValueError:
        raise BadInput(
            f"unknown phase {name!r}", hint=f"choose one of: {BASE}, {', '.join(PHASES)}"
        ) from None


# ---------------------------------------------------------------------------- migrate


def migrate(
    url: str,
    *,
    to: str | None = None,
    dry_run: bool = False,
    allow_changed: bool = False,
    wait: bool = True,
    timeouts: Timeouts = Timeouts(),
    directory: Traversable = MIGRATIONS_DIR,
    progress: MigrateProgress | None = None,
    grant_to: Sequence[str] = (),
) -> MigrateResult:
    """Apply the pending phases in order (up to and including `to`).

    The roles of `grant_to`, and those given before, get what the triggers need for them to
    write the app's tables (read and write on opskit's tables and sequences, read on its views),
    in each phase's own transaction. The roles are recorded, so a later migrate (after a
    rollback) grants them again.
    """
    progress = progress or _Silent()
    phases = load_phases(directory)
    target = _phase_index(to) if to is not None else len(PHASES) - 1
    if to == BASE:
        raise BadInput("--to base means nothing to apply", hint="use `opskit rollback --to base`")
    result = MigrateResult(dry_run=dry_run)
    with migration_lock(url, wait=wait, progress=progress), connect(url, autocommit=True) as conn:
        require_base_schema(conn)
        require_roles(conn, grant_to)
        if not dry_run:
            _ensure_ledger(conn)
        ledger = read_ledger(conn)
        _check_ledger(ledger, phases, allow_changed)
        beyond = [name for name in ledger if _phase_index(name) > target]
        if beyond:
            raise BadInput(
                f"--to {to}: {', '.join(sorted(beyond, key=_phase_index))} already applied",
                hint=f"use `opskit rollback --to {to}` to go back",
            )
        result.already_applied = [p.name for p in phases if p.name in ledger]
        grantees: list[str] = []
        if not dry_run:
            with conn.transaction():
                grantees = record_grantees(conn, grant_to, _applied_by(), progress.notice)
                grant(conn, grantees, [p for p in phases if p.name in ledger])
        pending = [p for p in phases if p.name not in ledger and _phase_index(p.name) <= target]
        last_runs = lock_runs(conn, "up") if dry_run else {}
        if pending and not dry_run:
            # More processes per index build: on a busy server each gets about an equal share
            # of the CPU (docs/migrations.md, "Under load").
            conn.execute(queries("migrations.sql")["raise_build_settings"])
        for phase in pending:
            if dry_run:
                result.plan.extend(_plan(phase))
                result.lock_groups.extend(lock_groups(phase, last_runs))
                continue
            started = time.perf_counter()
            if phase.transactional:
                count = _apply_in_one_transaction(conn, phase, timeouts, progress, grantees)
            else:
                count = _apply_statement_by_statement(
                    url, conn, phase, timeouts, progress, grantees
                )
            result.applied.append(
                {
                    "name": phase.name,
                    "statements": count,
                    "duration_ms": round((time.perf_counter() - started) * 1000),
                }
            )
        if dry_run:
            result.plan.extend(plan_grants(grant_to))
        result.granted = grantees
    return result


def _plan(phase: PhaseFile) -> list[PlannedStatement]:
    planned = []
    for number, statement in enumerate(phase.statements(), start=1):
        lock, blocks = describe_lock(statement)
        planned.append(PlannedStatement(phase.name, number, statement, lock, blocks))
    return planned


def _timeout_settings(statements: list[str], timeouts: Timeouts) -> dict[str, str]:
    """lock_timeout and statement_timeout for a script: flag, else the file's SET, else default."""
    from_file = {}
    for statement in statements:
        match = SET_TIMEOUT.match(sqlparse.format(statement, strip_comments=True).strip())
        if match:
            from_file[match.group(1).lower()] = match.group(2).strip()
    return {
        "lock_timeout": timeouts.lock_timeout
        or from_file.get("lock_timeout", Timeouts.default_lock_timeout),
        "statement_timeout": timeouts.statement_timeout
        or from_file.get("statement_timeout", Timeouts.default_statement_timeout),
    }


def _is_timeout_set(statement: str) -> bool:
    return bool(SET_TIMEOUT.match(sqlparse.format(statement, strip_comments=True).strip()))


def _set_timeouts(conn: psycopg.Connection, settings: dict[str, str], is_local: bool) -> None:
    for name, value in settings.items():
        conn.execute("SELECT set_config(%s, %s, %s)", (name, value, is_local))


def _reset_timeouts(conn: psycopg.Connection) -> None:
    conn.execute("RESET lock_timeout")
    conn.execute("RESET statement_timeout")


def _run_in_one_transaction(
    conn: psycopg.Connection,
    phase: PhaseFile,
    label: str,
    statements: list[str],
    timeouts: Timeouts,
    progress: MigrateProgress,
    finish: Callable[[], None],
    *,
    undo: bool = False,
) -> None:
    """Run `statements` and then `finish` (the ledger update) in one transaction.

    From its first `LOCK TABLE` on, the script is a locked section (opskit.engine.locked_section):
    it retries on its own, inside the transaction, until it gets its locks. Any other lock
    timeout or deadlock retries the whole transaction; any other error is reported with the
    number of the statement that failed, and nothing of the attempt remains.
    """
    settings = _timeout_settings(statements, timeouts)
    start = locked_section_start(statements)
    head = statements if start is None else statements[:start]
    section_statements = [
        (number, statement)
        for number, statement in enumerate(statements[len(head) :], start=len(head) + 1)
        if not _is_timeout_set(statement)
    ]

    def attempt() -> int:
        progress.phase_started(label, len(statements))
        number = 0
        section = None
        try:
            with conn.transaction():
                _set_timeouts(conn, settings, is_local=True)
                for number, statement in enumerate(head, start=1):  # noqa: B007
                    if not _is_timeout_set(statement):
                        conn.execute(statement)
                    progress.statement_finished(label)
                if section_statements:
                    section = LockedSection(
                        conn,
                        phase,
                        label,
                        section_statements,
                        retries=timeouts.lock_retries,
                        backoff_s=timeouts.backoff_s,
                    )
                    section.run(lambda: progress.statement_finished(label), progress.notice)
                    _set_timeouts(conn, settings, is_local=True)  # for the ledger update
                finish()
        except _LOCK_CONFLICTS:
            raise
        except SectionFailed as failed:
            raise _phase_error(phase, failed.number, failed.error, undo=undo) from failed.error
        except psycopg.Error as err:
            raise _phase_error(phase, number, err, undo=undo) from err
        if section is not None:
            section.committed("down" if undo else "up")
        return len(statements)

    _with_lock_retries(attempt, phase.name, timeouts, progress)


def _with_lock_retries(
    action: Callable[[], int], phase: str, timeouts: Timeouts, progress: MigrateProgress
) -> int:
    """Run `action`, retrying with exponential backoff on lock_timeout or a deadlock.

    Both mean a concurrent app transaction held a lock we need; the rolled-back attempt changed
    nothing, so trying again later is safe.
    """
    delay = timeouts.backoff_s
    for attempt in range(timeouts.lock_retries + 1):
        try:
            return action()
        except _LOCK_CONFLICTS as err:
            if attempt == timeouts.lock_retries:
                raise ProblemFound(
                    f"{phase}: could not get a lock after {attempt + 1} tries ({err})",
                    hint="find the long transaction holding it (pg_stat_activity) "
                    "or raise --lock-timeout",
                ) from err
            progress.notice(f"{phase}: {type(err).__name__}, retrying in {delay:.1f} s")
            time.sleep(delay)
            delay = min(delay * 2, 60)
    raise AssertionError("unreachable")


def _phase_error(
    phase: PhaseFile, number: int, err: psycopg.Error, *, undo: bool = False
) -> DatabaseError:
    if undo:
        return DatabaseError(
            f"{phase.down_path.name} statement {number} failed: {first_line(err)}",
            hint="the phase is still recorded as applied; fix the cause and run rollback again",
        )
    return DatabaseError(
        f"{phase.path.name} statement {number} failed: {first_line(err)}",
        hint="the phase was not recorded as applied; fix the cause and run migrate again",
    )


def _apply_in_one_transaction(
    conn: psycopg.Connection,
    phase: PhaseFile,
    timeouts: Timeouts,
    progress: MigrateProgress,
    grantees: Sequence[str],
) -> int:
    statements = phase.statements()
    started = time.perf_counter()
    _run_in_one_transaction(
        conn,
        phase,
        phase.name,
        statements,
        timeouts,
        progress,
        finish=lambda: _record_applied(conn, phase, started, grantees),
    )
    return len(statements)


def _apply_statement_by_statement(
    url: str,
    conn: psycopg.Connection,
    phase: PhaseFile,
    timeouts: Timeouts,
    progress: MigrateProgress,
    grantees: Sequence[str],
) -> int:
    statements = phase.statements()
    sql = queries("migrations.sql")
    key = {"phase": phase.name, "checksum": phase.checksum}
    done = {row[0] for row in conn.execute(sql["completed_steps"], key)}
    settings = _timeout_settings(statements, timeouts)
    _set_timeouts(conn, settings, is_local=False)
    progress.phase_started(phase.name, len(statements))
    started = time.perf_counter()
    try:
        for number, statement in enumerate(statements, start=1):
            if number in done or _is_timeout_set(statement):
                progress.statement_finished(phase.name)
                continue
            index = _CONCURRENT_INDEX.match(sqlparse.format(statement, strip_comments=True))

            def run(statement: str = statement, index=index) -> int:
                if (sessions := statement_sessions(statement)) > 1:
                    return _execute_in_sessions(url, conn, statement, sessions, settings)
                if not index:
                    return _execute(conn, statement)
                # before every try: a build that hit lock_timeout leaves an INVALID index
                # that IF NOT EXISTS would keep
                _drop_invalid_index(conn, index.group(1), progress)
                with _watch_index_build(conn, index.group(1), progress):
                    return _execute(conn, statement)

            try:
                _with_lock_retries(run, phase.name, timeouts, progress)
            except psycopg.Error as err:
                raise _phase_error(phase, number, err) from err
            conn.execute(sql["record_step"], {**key, "statement_no": number})
            progress.statement_finished(phase.name)
        with conn.transaction():
            _record_applied(conn, phase, started, grantees)
            conn.execute(sql["clear_steps"], {"phase": phase.name})
    finally:
        _reset_timeouts(conn)
    return len(statements)


def _record_applied(
    conn: psycopg.Connection, phase: PhaseFile, started: float, grantees: Sequence[str]
) -> None:
    """Record the phase as applied and grant its relations in the phase's own transaction, so
    the app's role can write through the new triggers from the moment they exist."""
    grant(conn, grantees, [phase])
    conn.execute(
        queries("migrations.sql")["record_applied"],
        {
            "name": phase.name,
            "checksum": phase.checksum,
            "duration_ms": round((time.perf_counter() - started) * 1000),
            "applied_by": _applied_by(),
            "version": __version__,
        },
    )


def _execute(conn: psycopg.Connection, statement: str) -> int:
    conn.execute(statement)
    return 1


def _execute_in_sessions(
    url: str, conn: psycopg.Connection, statement: str, sessions: int, settings: dict[str, str]
) -> int:
    """Run `statement` on `conn` and at the same time on `sessions - 1` more connections with the
    same timeouts; once all have ended, raise the first error if any.

    More backends get more of a busy server's CPU: the app's backends do not run fewer.
    """

    def on_own_connection() -> None:
        with connect(url, autocommit=True) as extra:
            _set_timeouts(extra, settings, is_local=False)
            extra.execute(statement)

    with ThreadPoolExecutor(max_workers=sessions - 1, thread_name_prefix="session") as pool:
        others = [pool.submit(on_own_connection) for _ in range(sessions - 1)]
        conn.execute(statement)  # on an error, leaving the block still waits for the others
    for other in others:
        other.result()  # raises the session's error
    return 1


def _drop_invalid_index(conn: psycopg.Connection, name: str, progress: MigrateProgress) -> None:
    """A killed concurrent build leaves an INVALID index that IF NOT EXISTS would keep forever."""
    row = conn.execute(queries("migrations.sql")["invalid_index"], {"name": name}).fetchone()
    if row and row[0]:
        progress.notice(f"dropping INVALID index {name} left by an interrupted build")
        conn.execute(
            psycopg.sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(
                psycopg.sql.SQL(name)  # the name comes from our own migration file
            )
        )


@contextmanager
def _watch_index_build(
    conn: psycopg.Connection, index: str, progress: MigrateProgress
) -> Iterator[None]:
    """Report pg_stat_progress_create_index for `conn`'s backend while the build runs."""
    pid = conn.info.backend_pid
    stop = threading.Event()

    def poll() -> None:
        try:
            with psycopg.connect(conn.info.dsn, autocommit=True, connect_timeout=5) as watcher:
                watcher.execute("SET application_name = 'opskit-index-progress'")
                while not stop.wait(0.5):
                    row = watcher.execute(
                        queries("migrations.sql")["index_build_progress"], {"pid": pid}
                    ).fetchone()
                    if row and row[1]:
                        progress.index_build(index, row[0], row[1])
        except psycopg.Error:
            return  # progress is a nicety; the build itself reports real errors

    watcher = threading.Thread(target=poll, name=f"progress-{index}", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join(timeout=5)


# ---------------------------------------------------------------------------- rollback


def rollback(
    url: str,
    *,
    to: str,
    timeouts: Timeouts = Timeouts(),
    directory: Traversable = MIGRATIONS_DIR,
    progress: MigrateProgress | None = None,
) -> list[str]:
    """Undo the applied phases after `to` (a phase name or `base`), newest first."""
    progress = progress or _Silent()
    target = _phase_index(to)
    phases = {phase.name: phase for phase in load_phases(directory)}
    undone = []
    with migration_lock(url, wait=True, progress=progress), connect(url, autocommit=True) as conn:
        ledger = read_ledger(conn)
        if ledger:
            _ensure_ledger(conn)  # a ledger older than opskit_migration_locks gets it
        for name in sorted(ledger, key=_phase_index, reverse=True):
            if _phase_index(name) <= target:
                break
            phase = phases.get(name)
            if phase is None:
                raise ProblemFound(f"phase {name} is applied but migrations/{name}.sql is missing")
            _undo(conn, phase, timeouts, progress)
            undone.append(name)
    return undone


def _undo(
    conn: psycopg.Connection, phase: PhaseFile, timeouts: Timeouts, progress: MigrateProgress
) -> None:
    """Run the phase's down script and forget the phase, in one transaction when it can."""
    text = phase.down_path.read_text() if phase.down_path else ""
    statements = split_statements(text)
    sql = queries("migrations.sql")
    label = f"undo {phase.name}"

    def forget() -> None:
        conn.execute(sql["forget_applied"], {"name": phase.name})
        conn.execute(sql["clear_steps"], {"phase": phase.name})

    if NO_TRANSACTION not in text.split("\n", 3)[0:3]:
        _run_in_one_transaction(
            conn, phase, label, statements, timeouts, progress, forget, undo=True
        )
        return
    # Statement by statement (e.g. DROP INDEX CONCURRENTLY); every statement is idempotent
    # (IF EXISTS), so a crash here is mended by running the rollback again.
    progress.phase_started(label, len(statements))
    _set_timeouts(conn, _timeout_settings(statements, timeouts), is_local=False)
    try:
        for number, statement in enumerate(statements, start=1):
            if not _is_timeout_set(statement):
                try:
                    _with_lock_retries(
                        lambda s=statement: _execute(conn, s), phase.name, timeouts, progress
                    )
                except psycopg.Error as err:
                    raise _phase_error(phase, number, err, undo=True) from err
            progress.statement_finished(label)
        with conn.transaction():
            forget()
    finally:
        _reset_timeouts(conn)


# ---------------------------------------------------------------------------- status


@dataclass(frozen=True)
class PhaseStatus:
    name: str
    state: str  # applied | pending | changed | missing-file
    applied_at: datetime | None
    duration_ms: int | None
    applied_by: str | None


def phase_statuses(
    conn: psycopg.Connection, directory: Traversable = MIGRATIONS_DIR
) -> list[PhaseStatus]:
    files = {phase.name: phase for phase in load_phases(directory)}
    ledger = read_ledger(conn)
    statuses = []
    for name in PHASES:
        row, phase = ledger.get(name), files.get(name)
        if row is None and phase is None:
            continue
        if row is None:
            state = "pending"
        elif phase is None:
            state = "missing-file"
        elif row.checksum != phase.checksum:
            state = "changed"
        else:
            state = "applied"
        statuses.append(
            PhaseStatus(
                name,
                state,
                row.applied_at if row else None,
                row.duration_ms if row else None,
                row.applied_by if row else None,
            )
        )
    return statuses
