"""Verbs of the embedded servers: up, down, env."""

from __future__ import annotations

import shlex
from typing import Annotated

import typer

from opskit.cli.common import (
    JsonOption,
    app,
    load_settings,
    print_json,
    stdout,
)
from opskit.core import servers
from opskit.core.settings import mask_url

# ---------------------------------------------------------------------------- servers


@app.command()
def up(
    pg_port: Annotated[
        int, typer.Option(min=0, max=65535, help="PostgreSQL port (0 picks a free one).")
    ] = servers.DEFAULT_PG_PORT,
    redis_port: Annotated[
        int, typer.Option(min=0, max=65535, help="Valkey port (0 picks a free one).")
    ] = servers.DEFAULT_REDIS_PORT,
    as_json: JsonOption = False,
) -> None:
    """Start the embedded PostgreSQL and Valkey under OPSKIT_HOME (idempotent).

    Servers run detached and outlive this command; `opskit down` stops them. A server whose URL
    is set in the environment (OPSKIT_DATABASE_URL, OPSKIT_REDIS_URL) is never started.
    """
    from opskit.core import servers

    settings = load_settings()
    status, started = servers.up(
        settings.home,
        pg_port=pg_port,
        redis_port=redis_port,
        start_postgres=settings.database_url is None,
        start_valkey=settings.redis_url is None,
    )
    if as_json:
        print_json({"started": started, **status.as_dict()})
        return
    for server in (status.postgres, status.valkey):
        if server is not None:
            state = "started" if server.name in started else "already running"
            stdout.print(f"{server.name}: {state} at {mask_url(server.url)} (pid {server.pid})")
    if settings.database_url:
        stdout.print(f"postgres: using OPSKIT_DATABASE_URL {mask_url(settings.database_url)}")
    if settings.redis_url:
        stdout.print(f"redis: using OPSKIT_REDIS_URL {mask_url(settings.redis_url)}")


@app.command()
def down(as_json: JsonOption = False) -> None:
    """Stop the embedded servers under OPSKIT_HOME (idempotent; data is kept)."""
    from opskit.core import servers

    stopped = servers.down(load_settings().home)
    if as_json:
        print_json({"stopped": stopped})
    elif stopped:
        stdout.print(f"stopped: {', '.join(stopped)}")
    else:
        stdout.print("no embedded server was running")


@app.command()
def env(as_json: JsonOption = False) -> None:
    """Print `export` lines for the database and Redis URLs in use.

    Use `eval "$(opskit env)"` to point other tools at the embedded servers. Passwords are
    masked, as in every URL opskit prints (the embedded servers have none).
    """
    from opskit.core import servers

    settings = load_settings()
    urls = {
        "OPSKIT_DATABASE_URL": servers.resolve_database_url(settings),
        "OPSKIT_REDIS_URL": servers.resolve_redis_url(settings),
    }
    masked = {name: mask_url(url) for name, url in urls.items()}
    if as_json:
        print_json(masked)
        return
    for name, url in masked.items():
        typer.echo(f"export {name}={shlex.quote(url)}")
