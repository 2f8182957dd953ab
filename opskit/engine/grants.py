"""`--grant-to`: the app's roles get what opskit's triggers need to write through them.

The roles are recorded in the ledger's database, so a later migrate (after a rollback) grants
them again; `opskit verify` checks the privileges.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import psycopg
from psycopg import sql as pgsql

from opskit.core.errors import BadInput
from opskit.engine.phase_files import PhaseFile, PlannedStatement, created_objects
from opskit.sql import queries

_GRANTABLE_KINDS = ("table", "view", "materialized view")
_READ_WRITE = ("SELECT", "INSERT", "UPDATE", "DELETE")  # delta rows, base tables, the queue
_GRANTS_BY_KIND = {"r": _READ_WRITE, "v": ("SELECT",), "m": ("SELECT",)}
_SEQUENCE_GRANTS = ("USAGE", "SELECT")
# Written only by the daemon (the migrating role): app roles read them. Their triggers only
# write mv_change_log (and phase 1's delta tables).
_READ_ONLY_TABLES = frozenset(
    {
        "mv_refresh_log",
        "mv_change_routes",
        "mv_pending_changes",
        "mv_feed_scoring",
        "mv_feed_projects",
        "mv_leaderboard_projects",
        "mv_leaderboard_builders",
        "mv_chains_discovery",
        "mv_project_details",
        "mv_search_index",
        "mv_chain_posts",
        "mv_investors_directory",
    }
)


def require_roles(conn: psycopg.Connection, roles: Sequence[str]) -> None:
    if not roles:
        return
    missing = [
        row[0]
        for row in conn.execute(queries("migrations.sql")["missing_roles"], {"roles": list(roles)})
    ]
    if missing:
        raise BadInput(
            f"--grant-to: role {', '.join(map(repr, missing))} does not exist",
            hint="create the app's role first (CREATE ROLE), or check the name",
        )


def plan_grants(roles: Sequence[str]) -> list[PlannedStatement]:
    return [
        PlannedStatement(
            "grants",
            number,
            f"GRANT {', '.join(_READ_WRITE)} ON opskit's tables, SELECT ON its views, "
            f"{', '.join(_SEQUENCE_GRANTS)} ON its sequences TO {role}",
            "none (catalog rows only)",
            "nothing",
        )
        for number, role in enumerate(roles, start=1)
    ]


def record_grantees(
    conn: psycopg.Connection,
    new_roles: Sequence[str],
    granted_by: str,
    notice: Callable[[str], None],
) -> list[str]:
    """Record `new_roles`; return every recorded role that still exists."""
    sql = queries("migrations.sql")
    for role in new_roles:
        conn.execute(sql["record_grantee"], {"role": role, "granted_by": granted_by})
    roles = []
    for role, role_exists in conn.execute(sql["grantees"]).fetchall():
        if role_exists:
            roles.append(role)
        else:
            notice(f"role {role!r} was dropped since it was granted; skipped")
    return roles


def _grant_statements(
    conn: psycopg.Connection, phases: Iterable[PhaseFile]
) -> list[tuple[tuple[str, ...], str, str]]:
    """(privileges, object type, name) an app role needs on what the phases created.

    The relation names come from the phase files (a whitelist) and the sequences from the
    catalog (those the tables own), so nothing of the app's own is touched.
    """
    sql = queries("migrations.sql")
    names = sorted({name for kind, name in created_objects(phases) if kind in _GRANTABLE_KINDS})
    relations = conn.execute(sql["existing_relations"], {"names": names}).fetchall()
    tables = [name for name, kind in relations if kind == "r"]
    sequences = [row[0] for row in conn.execute(sql["owned_sequences"], {"tables": tables})]
    return [
        (("SELECT",) if name in _READ_ONLY_TABLES else _GRANTS_BY_KIND[kind], "TABLE", name)
        for name, kind in sorted(relations)
    ] + [(_SEQUENCE_GRANTS, "SEQUENCE", name) for name in sequences]


def grant(conn: psycopg.Connection, roles: Sequence[str], phases: list[PhaseFile]) -> None:
    """Grant `roles` what they need on the phases' relations (GRANT locks no table): one
    statement per set of privileges, naming every object and role."""
    if not roles:
        return
    objects: dict[tuple[tuple[str, ...], str], list[str]] = {}
    for privileges, object_type, name in _grant_statements(conn, phases):
        objects.setdefault((privileges, object_type), []).append(name)
    for (privileges, object_type), names in objects.items():
        conn.execute(
            pgsql.SQL("GRANT {} ON {} {} TO {}").format(
                pgsql.SQL(", ").join(map(pgsql.SQL, privileges)),
                pgsql.SQL(object_type),
                pgsql.SQL(", ").join(map(pgsql.Identifier, names)),
                pgsql.SQL(", ").join(map(pgsql.Identifier, roles)),
            )
        )


@dataclass(frozen=True)
class GrantState:
    role: str
    role_exists: bool
    missing: list[str]  # "INSERT on project_stats_delta", ...


def grant_states(conn: psycopg.Connection, phases: Iterable[PhaseFile]) -> list[GrantState]:
    """For each role of `migrate --grant-to`, the privileges it lacks (revoked since)."""
    sql = queries("migrations.sql")
    if not conn.execute(sql["grants_table_exists"]).fetchone()[0]:
        return []
    wanted = [
        (name, privilege, object_type == "SEQUENCE")
        for privileges, object_type, name in _grant_statements(conn, phases)
        for privilege in privileges
    ]
    columns = {
        "names": [name for name, _, _ in wanted],
        "privileges": [privilege for _, privilege, _ in wanted],
        "is_sequence": [is_sequence for _, _, is_sequence in wanted],
    }
    states = []
    for role, role_exists in conn.execute(sql["grantees"]).fetchall():
        missing = []
        if role_exists and wanted:
            missing = [
                f"{privilege} on {name}"
                for name, privilege in conn.execute(
                    sql["missing_privileges"], {"role": role, **columns}
                )
            ]
        states.append(GrantState(role, role_exists, missing))
    return states
