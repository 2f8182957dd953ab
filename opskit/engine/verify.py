"""`opskit verify`: the objects the applied phases create exist and are valid, every
denormalized relation equals its truth (docs/interface.md §3, §6), and every maintained view
equals its definition but for the keys whose changes are still pending (§7), all read in one
snapshot."""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources.abc import Traversable

import psycopg

from opskit.core.schema import require_base_schema
from opskit.engine.grants import GrantState, grant_states
from opskit.engine.migrations import read_ledger
from opskit.engine.phase_files import MIGRATIONS_DIR, created_objects, load_phases
from opskit.engine.refresh import diff_against_definition, known_views
from opskit.engine.truth import DENORMALIZED, diff_against_truth
from opskit.sql import queries


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class VerifyReport:
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)


def verify(conn: psycopg.Connection, directory: Traversable = MIGRATIONS_DIR) -> VerifyReport:
    """Run every check in one REPEATABLE READ, READ ONLY snapshot (`conn` must autocommit)."""
    if not conn.autocommit:
        raise ValueError("verify needs an autocommit connection to open its own snapshot")
    require_base_schema(conn)
    checks: list[Check] = []
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        applied = set(read_ledger(conn))
        checks.append(Check("phases applied", bool(applied), ", ".join(sorted(applied)) or "none"))
        verify_sql = queries("verify.sql")
        phases = [phase for phase in load_phases(directory) if phase.name in applied]
        for kind, name in created_objects(phases):
            checks.append(_object_check(conn, verify_sql, kind, name))
        for grant in grant_states(conn, phases):
            checks.append(_grant_check(grant))
        for spec in DENORMALIZED:
            if not conn.execute("SELECT to_regclass(%s) IS NOT NULL", (spec.relation,)).fetchone()[
                0
            ]:
                continue
            diff = diff_against_truth(conn, spec)
            detail = f"{diff.rows_compared} rows compared, {diff.differing} differ"
            if diff.differing:
                detail += f"; first differing keys: {'; '.join(diff.first_keys)}"
            checks.append(Check(f"{spec.relation} equals truth", diff.differing == 0, detail))
        if conn.execute("SELECT to_regclass('mv_change_routes') IS NOT NULL").fetchone()[0]:
            checks.extend(_definition_check(conn, view) for view in known_views(conn))
    return VerifyReport(checks)


def _definition_check(conn: psycopg.Connection, view: str) -> Check:
    diff = diff_against_definition(conn, view)
    label = f"{view} equals its definition"
    if diff.rebuild_pending:
        return Check(label, True, "a full rebuild is pending (a source table was truncated)")
    detail = f"{diff.rows_compared} rows compared, {len(diff.differing)} keys differ"
    if diff.pending:
        detail += f" ({diff.pending} more with changes still pending)"
    if diff.differing:
        detail += f"; first differing keys: {', '.join(diff.differing[:5])}"
        detail += "; `opskit refresh --full` rebuilds it"
    return Check(label, not diff.differing, detail)


def _grant_check(grant: GrantState) -> Check:
    label = f"grants to {grant.role}"
    if not grant.role_exists:
        return Check(label, True, "the role was dropped; nothing to check")
    if grant.missing:
        return Check(
            label,
            False,
            f"missing {', '.join(grant.missing[:5])}"
            + (f" and {len(grant.missing) - 5} more" if len(grant.missing) > 5 else "")
            + "; run `opskit migrate` to grant them again",
        )
    return Check(label, True, "every privilege the triggers need is held")


def _object_check(conn: psycopg.Connection, verify_sql: dict, kind: str, name: str) -> Check:
    label = f"{kind} {name}"
    if kind == "trigger":
        row = conn.execute(verify_sql["trigger_state"], {"name": name}).fetchone()
        if row is None:
            return Check(label, False, "missing")
        return Check(label, row[0] != "D", "enabled" if row[0] != "D" else "DISABLED")
    if kind == "function":
        found = conn.execute(verify_sql["function_exists"], {"name": name}).fetchone()[0]
        return Check(label, found, "exists" if found else "missing")
    if conn.execute("SELECT to_regclass(%s) IS NULL", (name,)).fetchone()[0]:
        return Check(label, False, "missing")
    if kind == "index":
        valid = conn.execute(verify_sql["index_valid"], {"name": name}).fetchone()[0]
        return Check(label, valid, "valid" if valid else "INVALID (an interrupted build)")
    if kind == "materialized view":
        populated, unique_index = conn.execute(
            verify_sql["matview_state"], {"name": name}
        ).fetchone()
        problems = [
            p
            for p, bad in (
                ("not populated", not populated),
                ("no plain unique index", not unique_index),
            )
            if bad
        ]
        return Check(label, not problems, "; ".join(problems) or "populated, plain unique index")
    return Check(label, True, "exists")
