"""Verbs of the app under test: the HTTP API and its tokens."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

from opskit.app import auth
from opskit.app.answercache import DEFAULT_TTL_S as DEFAULT_ANSWER_CACHE_S
from opskit.app.endpoints import MODES
from opskit.cli.common import (
    app,
    load_settings,
    stderr,
)
from opskit.core.settings import DEFAULT_API_POOL_SIZE

# ---------------------------------------------------------------------------- api

ApiMode = Enum("ApiMode", {name: name for name in MODES}, type=str)


@app.command()
def serve(
    mode: Annotated[
        ApiMode,
        typer.Option(help="before: normalized tables; after: denormalized + views + Redis."),
    ],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8000,
    workers: Annotated[
        int, typer.Option(min=1, max=64, help="Server processes sharing the port.")
    ] = 1,
    pool_size: Annotated[
        int, typer.Option(min=1, max=100, help="Database connections per process.")
    ] = DEFAULT_API_POOL_SIZE,
    answer_cache: Annotated[
        float,
        typer.Option(
            min=0,
            max=60,
            help="After mode: seconds an anonymous answer of a hot page may be kept at most; "
            "dropped at once when a view it read changes. 0 turns the cache off.",
        ),
    ] = DEFAULT_ANSWER_CACHE_S,
) -> None:
    """Run the HTTP API (docs/interface.md §9) until interrupted, in before or after mode.

    before answers from the app's normalized tables with the joins an app would write; after
    answers from the denormalized relations, the materialized views and the Redis vote cache
    (every phase must be applied). Both give the same JSON on the same data. uvicorn with uvloop
    and httptools; --workers N starts N processes on the same port, each with --pool-size
    connections opened at start. After mode keeps each worker's anonymous answers of the hot
    pages until the daemon changes a view they read (--answer-cache). Tokens: `opskit token
    USER_ID`.
    """
    from opskit.app import api

    settings = load_settings()
    stderr.print(
        f"opskit API ({mode.value} mode) on http://{host}:{port} "
        f"({workers} worker{'s' if workers > 1 else ''}, pool {pool_size}); Ctrl-C stops it",
        markup=False,
    )
    api.serve(
        settings, mode.value, host=host, port=port, workers=workers, pool_size=pool_size,
        answer_cache_s=answer_cache,
    )  # fmt: skip


@app.command()
def token(
    user_id: Annotated[int, typer.Argument(min=1, max=auth.MAX_USER_ID, help="The user's id.")],
    ttl: Annotated[
        int, typer.Option(min=1, max=auth.MAX_TTL_S, help="Lifetime in seconds.")
    ] = 86400,
) -> None:
    """Print a bearer token (HS256 JWT, sub = USER_ID) for the API.

    Signed with OPSKIT_JWT_SECRET, else the secret generated once into OPSKIT_HOME/jwt_secret.
    The user is not looked up: a token for a user that does not exist gets 401 from the API.
    Use it as `Authorization: Bearer <token>`.
    """
    from opskit.app import auth

    typer.echo(auth.token_for_user(load_settings(), user_id, ttl))
