"""The application's base schema (docs/interface.md §5): create, check, count, fingerprint it."""

from __future__ import annotations

import psycopg
from psycopg import sql

from opskit.core.errors import SchemaMissing
from opskit.sql import queries, script

# Parents before children: the order to load data in.
APP_TABLES: tuple[str, ...] = (
    "users",
    "chains",
    "chain_members",
    "projects",
    "votes",
    "comments",
    "follows",
    "chain_posts",
    "chain_post_replies",
    "messages",
    "intro_requests",
    "investor_profiles",
)


def create_base_schema(conn: psycopg.Connection) -> None:
    """Create every app table and its normal indexes that do not exist yet."""
    conn.execute(script("base_schema.sql"))


def missing_app_tables(conn: psycopg.Connection) -> list[str]:
    present = {
        row[0]
        for row in conn.execute(
            queries("schema.sql")["existing_tables"], {"names": list(APP_TABLES)}
        )
    }
    return [name for name in APP_TABLES if name not in present]


def require_base_schema(conn: psycopg.Connection) -> None:
    """Raise SchemaMissing (exit 3) unless every app table exists."""
    missing = missing_app_tables(conn)
    if missing:
        raise SchemaMissing(
            f"the database has no opskit app schema (missing: {', '.join(missing)})",
            hint="run `opskit seed --scale tiny` (or larger) to create and fill it",
        )


def row_counts(conn: psycopg.Connection) -> dict[str, int]:
    """Exact row count of every app table."""
    return {
        table: conn.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
        ).fetchone()[0]
        for table in APP_TABLES
    }


def table_fingerprints(conn: psycopg.Connection) -> dict[str, str]:
    """An order-independent md5 of every app table's rows: equal data, equal fingerprint."""
    template = sql.SQL(queries("schema.sql")["table_fingerprint"])
    return {
        table: conn.execute(template.format(table=sql.Identifier(table))).fetchone()[0]
        for table in APP_TABLES
    }


def has_rows(conn: psycopg.Connection) -> bool:
    return any(
        conn.execute(
            sql.SQL("SELECT EXISTS (SELECT FROM {})").format(sql.Identifier(table))
        ).fetchone()[0]
        for table in APP_TABLES
    )


def app_table_triggers(conn: psycopg.Connection) -> list[str]:
    """User triggers on app tables (created by opskit phases or the app itself)."""
    return [
        row[0]
        for row in conn.execute(queries("schema.sql")["app_triggers"], {"names": list(APP_TABLES)})
    ]
