"""Scratch databases for the before-and-after benchmarks: clones of one seeded database.

`opskit bench` and `opskit bench-api` both compare the app without opskit (a clone with no
phase) against the app with it (a clone with every phase), so the two sides start from the
same rows. `CREATE DATABASE ... TEMPLATE` copies files, much faster than seeding twice.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from opskit.core.db import connect, redis_client
from opskit.core.errors import DatabaseError, first_line


def database_url(server_url: str, name: str) -> str:
    """The URL of database `name` on the server of `server_url`."""
    return psycopg.conninfo.make_conninfo(server_url, dbname=name)


def database_name(url: str) -> str:
    return psycopg.conninfo.conninfo_to_dict(url)["dbname"]


def drop_databases(admin_url: str, urls: list[str]) -> None:
    """Drop these databases if they exist, ending their sessions."""
    with connect(admin_url, autocommit=True) as admin:
        for url in urls:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(database_name(url))
                )
            )


def clone_database(admin: psycopg.Connection, template_url: str, clone_url: str) -> None:
    """Create `clone_url`'s database as a copy of `template_url`'s (no session may use it)."""
    try:
        admin.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(database_name(clone_url)),
                sql.Identifier(database_name(template_url)),
            )
        )
    except psycopg.errors.ObjectInUse as err:
        raise DatabaseError(
            f"cannot clone {database_name(template_url)}: {first_line(err)}",
            hint="a database is cloned only while nobody is connected to it",
        ) from err


def forget_redis_keys(redis_url: str, prefix: str) -> None:
    """Delete every key under `prefix` (a benchmark's vote cache)."""
    client = redis_client(redis_url)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
