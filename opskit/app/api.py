"""The HTTP API (docs/interface.md §9): Starlette routes over `opskit.app.endpoints`, in before
or after mode.

Routes only parse and validate the request, check the bearer token, borrow a pooled connection,
call one `Endpoints` method and encode its answer with orjson. Bad input gets a 4xx with
`{"error": "..."}` and never reaches the database: query-string problems are 400, malformed or
non-UTF-8 JSON bodies 400, bodies over 64 KiB 413, well-formed bodies with wrong fields 422,
missing/invalid/expired tokens (or a token whose user is gone) 401, a message or intro to oneself
403, unknown ids 404, a method the route does not serve 405 (with `Allow`). Validation accepts
exactly what the request schemas of `opskit.app.openapi` allow.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import psycopg
import psycopg_pool
import redis.asyncio
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from opskit.app import auth
from opskit.app.answercache import DEFAULT_TTL_S as DEFAULT_ANSWER_CACHE_S
from opskit.app.answercache import AnswerCache
from opskit.app.auth import VerifiedTokens
from opskit.app.endpoints import (
    AFTER_VIEWS,
    CHAIN_ORDERS,
    FEED_ORDERS,
    MODES,
    SEARCH_SIMILARITY_THRESHOLD,
    ApiError,
    Endpoints,
    Page,
    user_gone,
)
from opskit.app.openapi import (
    BLANK,
    DEFAULT_PER_PAGE,
    MAX_BODY_BYTES,
    MAX_ID,
    MAX_MESSAGE_CHARS,
    MAX_PAGE,
    MAX_PER_PAGE,
    MAX_QUERY_CHARS,
    openapi_document,
)
from opskit.core import servers
from opskit.core.db import connect, redis_client
from opskit.core.errors import BadInput, EnvironmentProblem, first_line
from opskit.core.schema import APP_TABLES
from opskit.core.settings import DEFAULT_API_POOL_SIZE, Settings, mask_url
from opskit.engine.votecache import VoteCache, redis_async_client
from opskit.sql import queries

log = logging.getLogger(__name__)

POOL_TIMEOUT_S = 10.0
WORKER_HEALTHCHECK_TIMEOUT_S = 30
# An idle keep-alive connection is closed after this long. uvicorn's default (5 s) is the
# longest think time of `opskit capacity`'s users (1-5 s): a user sending just as the server
# closed its connection lost that request (status 0, once or twice a step from 3,000 users
# on). nginx's default, and longer than any client here waits between requests.
KEEP_ALIVE_S = 75
# Every connection: UTC timestamps in JSON, search's trigram threshold (for the `%` operator
# the word index serves), no runaway query.
CONNECTION_OPTIONS = (
    f"-c TimeZone=UTC -c pg_trgm.similarity_threshold={SEARCH_SIMILARITY_THRESHOLD} "
    "-c statement_timeout=60s"
)
AFTER_RELATIONS = (
    "user_dashboard_stats",
    "message_conversations_denorm",
    "intro_request_stats",
    "mv_feed_projects",
    "mv_project_details",
    "mv_leaderboard_projects",
    "mv_leaderboard_builders",
    "mv_chains_discovery",
    "mv_chain_posts",
    "mv_search_index",
    "search_words",
    "search_postings",
    "mv_investors_directory",
)
# `opskit serve --workers N` hands these to the worker processes (uvicorn imports the factory).
ENV_MODE, ENV_POOL_SIZE = "OPSKIT_API_MODE", "OPSKIT_API_POOL_SIZE"
ENV_ANSWER_CACHE_S = "OPSKIT_API_ANSWER_CACHE_S"


# ---------------------------------------------------------------------------- responses


def _encode(content: Any) -> bytes:
    return orjson.dumps(content, option=orjson.OPT_UTC_Z)


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return _encode(content)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    if status == 401:
        headers = {**(headers or {}), "WWW-Authenticate": "Bearer"}
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _api_error(request: Request, exc: ApiError) -> Response:
    return _error(exc.status, exc.message)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    # Starlette's 405 carries `Allow` with the route's methods (RFC 9110 requires it).
    return _error(exc.status_code, exc.detail, exc.headers)


async def _database_unavailable(request: Request, exc: Exception) -> Response:
    log.warning("database unavailable: %s", first_line(exc))
    return _error(503, "database unavailable, try again")


async def _bad_value(request: Request, exc: psycopg.DataError) -> Response:
    # Input validation should have caught it; the database refused a value, nothing was written.
    log.warning("database refused a value: %s", first_line(exc))
    return _error(400, "invalid value")


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return _error(500, "internal error")


class ServerTiming:
    """Adds `Server-Timing: app;dur=<ms>` (request received to response start) to every answer.

    `opskit bench-api` reads it to report the server's own latency next to what a client saw.
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        async def send_with_timing(message) -> None:
            if message["type"] == "http.response.start":
                duration_ms = (time.perf_counter() - started) * 1000
                timing = (b"server-timing", f"app;dur={duration_ms:.3f}".encode())
                message = {**message, "headers": [*message.get("headers", ()), timing]}
            await send(message)

        await self.app(scope, receive, send_with_timing)


# ---------------------------------------------------------------------------- request parsing


def _int_text(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 19 else None


def _query_int(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    value = _int_text(raw)
    if value is None or not low <= value <= high:
        raise ApiError(400, f"{name} must be an integer from {low} to {high}")
    return value


def _page(request: Request) -> Page:
    return Page(
        number=_query_int(request, "page", 1, 1, MAX_PAGE),
        size=_query_int(request, "per_page", DEFAULT_PER_PAGE, 1, MAX_PER_PAGE),
    )


def _query_choice(request: Request, name: str, choices: dict, default: str) -> str:
    value = request.query_params.get(name, default)
    if value not in choices:
        raise ApiError(400, f"{name} must be one of {', '.join(choices)}")
    return value


# RFC 3339's date-time (the document's `format: date-time`): T and Z in either case, seconds up
# to 60 (a leap second), any number of fraction digits, an offset of Z, +hh:mm or -hh:mm. Clients
# have always been able to leave the offset out (read as UTC), so it stays optional here.
MINUTE = timedelta(minutes=1)
RFC3339_DATE_TIME = re.compile(
    r"(?P<date>\d{4}-\d{2}-\d{2})[Tt](?P<hour>\d{2}):(?P<minute>\d{2}):(?P<second>\d{2})"
    r"(?P<fraction>\.\d+)?(?P<offset>[Zz]|[+-]\d{2}:\d{2})?",
    re.ASCII,
)


def _as_of(request: Request) -> datetime | None:
    """The instant trending scores are asked for: ?as_of=<RFC 3339 date-time>, else None (the
    mode's default: now in before mode, the last refresh's instant in after mode)."""
    raw = request.query_params.get("as_of")
    if raw is None:
        return None
    try:
        instant = rfc3339_instant(raw)
    except ValueError:
        raise ApiError(
            400,
            "as_of must be an RFC 3339 date-time from year 0001 to 9999, e.g. 2026-11-01T12:00:00Z",
        ) from None
    try:
        return instant.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00:00+01:00 is in year 0 in UTC: PostgreSQL takes it
        return instant


def rfc3339_instant(text: str) -> datetime:
    """The aware datetime an RFC 3339 date-time names (without an offset: UTC); ValueError when
    the text is not one.

    A leap second (23:59:60 in UTC) is the first instant of the next minute, as PostgreSQL reads
    it. Python's datetime cannot hold year 0000, which RFC 3339 allows: that is a ValueError too.
    """
    match = RFC3339_DATE_TIME.fullmatch(text)
    if match is None:
        raise ValueError(f"not an RFC 3339 date-time: {text!r}")
    leap_second = match["second"] == "60"
    if leap_second:
        text = text[: match.start("second")] + "59" + text[match.end("second") :]
    instant = datetime.fromisoformat(text.upper())
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=UTC)
    if not leap_second:
        return instant
    utc_minute = (instant.hour * 60 + instant.minute - instant.utcoffset() // MINUTE) % (24 * 60)
    if utc_minute != 23 * 60 + 59:
        raise ValueError(f"a leap second is 23:59:60 in UTC, not {text!r}")
    try:
        return instant + timedelta(seconds=1)
    except OverflowError:
        raise ValueError(f"{text!r} is past year 9999") from None


def _text(value: str, name: str, max_chars: int, status: int) -> str:
    """A text input as the document's `_text_input` schema allows it, without the blank ends."""
    if not 1 <= len(value) <= max_chars or "\x00" in value or not value.strip(BLANK):
        raise ApiError(
            status,
            f"{name} must be 1 to {max_chars} characters, not only spaces and control "
            "characters, without NUL",
        )
    return value.strip(BLANK)


def _path_id(request: Request, name: str, what: str) -> int:
    raw = request.path_params[name]
    value = _int_text(raw)
    if value is None or not 1 <= value <= MAX_ID:
        raise ApiError(404, f"no {what} {raw[:40]!r}")
    return value


async def _json_body(request: Request) -> dict:
    declared = request.headers.get("content-length")
    if declared is not None and (_int_text(declared) or 0) > MAX_BODY_BYTES:
        raise ApiError(413, f"body larger than {MAX_BODY_BYTES} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise ApiError(413, f"body larger than {MAX_BODY_BYTES} bytes")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ApiError(400, "body is not valid JSON in UTF-8") from None
    if not isinstance(payload, dict):
        raise ApiError(422, "body must be a JSON object")
    return payload


def _field_id(body: dict, name: str, *, required: bool = True) -> int | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if type(value) is float and value.is_integer():
        value = int(value)  # JSON has one number type: 390.0 is the integer 390 (JSON Schema too)
    if type(value) is not int or not 1 <= value <= MAX_ID:
        raise ApiError(422, f"{name} must be an integer id from 1 to {MAX_ID}")
    return value


def _field_text(body: dict, name: str, max_chars: int, *, required: bool = True) -> str | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise ApiError(422, f"{name} must be a string")
    return _text(value, name, max_chars, 422)


def _field_choice(body: dict, name: str, choices: tuple[str, ...]) -> str:
    value = body.get(name)
    if value not in choices:
        raise ApiError(422, f"{name} must be one of {', '.join(choices)}")
    return value


# ---------------------------------------------------------------------------- the app


@dataclass
class ApiState:
    mode: str
    tokens: VerifiedTokens
    pool: psycopg_pool.AsyncConnectionPool
    endpoints: Endpoints
    redis: redis.asyncio.Redis | None
    answers: AnswerCache | None = None  # after mode's anonymous answers (None: not cached)


def _state(request: Request) -> ApiState:
    return request.app.state.api


def _token_user(request: Request, *, required: bool) -> int | None:
    """The user id of the request's bearer token; None without a token when not required."""
    header = request.headers.get("authorization")
    if header is None:
        if required:
            raise ApiError(401, "missing bearer token (Authorization: Bearer <token>)")
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "the Authorization header must be `Bearer <token>`")
    try:
        return _state(request).tokens.user_id(token.strip())
    except auth.InvalidToken as err:
        raise ApiError(401, str(err)) from None


async def _require_existing(state: ApiState, conn, user_id: int | None) -> None:
    if user_id is not None and not await state.endpoints.user_exists(conn, user_id):
        raise user_gone()


async def health(request: Request) -> Response:
    state = _state(request)
    database = "ok"
    try:
        async with state.pool.connection(timeout=2) as conn:
            await conn.execute("SELECT 1")
    except (psycopg.Error, psycopg_pool.PoolTimeout) as err:
        database = f"unreachable: {first_line(err)}"
    redis_state = "unused"
    if state.redis is not None:
        try:
            await state.redis.ping()
            redis_state = "ok"
        except (redis.RedisError, TimeoutError) as err:
            redis_state = f"unreachable: {first_line(err)}"
    healthy = database == "ok" and redis_state in ("ok", "unused")
    body = {
        "status": "ok" if healthy else "degraded",
        "mode": state.mode,
        "database": database,
        "redis": redis_state,
    }
    if state.endpoints.vote_cache is not None:
        body["vote_cache_failures"] = state.endpoints.vote_cache.failures
    if state.answers is not None:
        body["answer_cache"] = state.answers.stats()  # this worker's
    return JSONResponse(body, status_code=200 if healthy else 503)


async def health_db(request: Request) -> Response:
    """The floor: one SELECT 1 through the same pool and encoder as every endpoint."""
    async with _state(request).pool.connection() as conn:
        await conn.execute("SELECT 1")
    return JSONResponse({"ok": True})


async def _anonymous(request: Request, read: str, *args: Any, variant: Any = None) -> Response:
    """`Endpoints.<read>(conn, *args)` encoded; in after mode through the answer cache, keyed by
    the parsed request (the args, and a variant the args do not tell apart) and dropped when a
    view the read reads changes."""
    state = _state(request)

    async def compute() -> bytes:
        async with state.pool.connection() as conn:
            return _encode(await getattr(state.endpoints, read)(conn, *args))

    if state.answers is None:
        body = await compute()
    else:
        key = (read, variant, *args)
        body = await state.answers.answer(key, AFTER_VIEWS[read], compute)
    return Response(body, media_type="application/json")


async def user_stats(request: Request) -> Response:
    user_id = _token_user(request, required=True)
    state = _state(request)
    async with state.pool.connection() as conn:
        row = await state.endpoints.user_stats(conn, user_id)
    if row is None:
        raise user_gone()
    return JSONResponse(row)


async def intro_stats(request: Request) -> Response:
    user_id = _token_user(request, required=True)
    state = _state(request)
    async with state.pool.connection() as conn:
        row = await state.endpoints.intro_stats(conn, user_id)
    if row is None:
        raise user_gone()
    return JSONResponse(row)


async def feed(request: Request) -> Response:
    viewer = _token_user(request, required=False)
    sort = _query_choice(request, "sort", FEED_ORDERS, "trending")
    as_of, page = _as_of(request), _page(request)
    if viewer is None:  # equal instants, other offsets: the answer may echo the offset asked
        offset = as_of.utcoffset() if as_of is not None else None
        return await _anonymous(request, "feed", sort, as_of, page, None, variant=offset)
    state = _state(request)
    async with state.pool.connection() as conn:
        return JSONResponse(await state.endpoints.feed(conn, sort, as_of, page, viewer))


async def project(request: Request) -> Response:
    viewer = _token_user(request, required=False)
    project_id = _path_id(request, "project_id", "project")
    if viewer is None:
        return await _anonymous(request, "project", project_id, None)
    state = _state(request)
    async with state.pool.connection() as conn:
        return JSONResponse(await state.endpoints.project(conn, project_id, viewer))


async def leaderboard_projects(request: Request) -> Response:
    return await _anonymous(request, "leaderboard_projects", _page(request))


async def leaderboard_builders(request: Request) -> Response:
    return await _anonymous(request, "leaderboard_builders", _page(request))


async def chains(request: Request) -> Response:
    sort = _query_choice(request, "sort", CHAIN_ORDERS, "members")
    return await _anonymous(request, "chains", sort, _page(request))


async def chain_posts(request: Request) -> Response:
    slug = _text(request.path_params["slug"], "slug", MAX_QUERY_CHARS, 404)
    return await _anonymous(request, "chain_posts", slug, _page(request))


async def search(request: Request) -> Response:
    q = _text(request.query_params.get("q", ""), "q", MAX_QUERY_CHARS, 400)
    return await _anonymous(request, "search", q, _page(request))


async def investors(request: Request) -> Response:
    return await _anonymous(request, "investors", _page(request))


async def conversations(request: Request) -> Response:
    user_id = _token_user(request, required=True)
    page, state = _page(request), _state(request)
    async with state.pool.connection() as conn:
        return JSONResponse(await state.endpoints.conversations(conn, user_id, page))


async def vote(request: Request) -> Response:
    user_id = _token_user(request, required=True)
    body = await _json_body(request)
    project_id = _field_id(body, "project_id")
    vote_type = _field_choice(body, "vote_type", ("up", "down", "none"))
    state = _state(request)
    async with state.pool.connection() as conn:
        return JSONResponse(await state.endpoints.vote(conn, user_id, project_id, vote_type))


async def send_message(request: Request) -> Response:
    user_id = _token_user(request, required=True)
    body = await _json_body(request)
    recipient_id = _field_id(body, "recipient_id")
    text = _field_text(body, "body", MAX_MESSAGE_CHARS)
    if recipient_id == user_id:
        raise ApiError(403, "you cannot send a message to yourself")
    state = _state(request)
    async with state.pool.connection() as conn:
        await _require_existing(state, conn, user_id)
        message = await state.endpoints.send_message(conn, user_id, recipient_id, text)
    return JSONResponse(message, status_code=201)


async def mark_read(request: Request) -> Response:
    user_id = _token_user(request, required=True)
    other_user_id = _path_id(request, "other_user_id", "user")
    state = _state(request)
    async with state.pool.connection() as conn:
        await _require_existing(state, conn, user_id)
        return JSONResponse(await state.endpoints.mark_read(conn, user_id, other_user_id))


async def request_intro(request: Request) -> Response:
    user_id = _token_user(request, required=True)
    body = await _json_body(request)
    target_id = _field_id(body, "target_id")
    project_id = _field_id(body, "project_id", required=False)
    message = _field_text(body, "message", MAX_MESSAGE_CHARS, required=False)
    if target_id == user_id:
        raise ApiError(403, "you cannot request an intro to yourself")
    state = _state(request)
    async with state.pool.connection() as conn:
        await _require_existing(state, conn, user_id)
        intro = await state.endpoints.request_intro(conn, user_id, target_id, project_id, message)
    return JSONResponse(intro, status_code=201)


async def respond_intro(request: Request) -> Response:
    user_id = _token_user(request, required=True)
    intro_id = _path_id(request, "intro_id", "intro request")
    body = await _json_body(request)
    status = _field_choice(body, "status", ("accepted", "declined"))
    state = _state(request)
    async with state.pool.connection() as conn:
        await _require_existing(state, conn, user_id)
        return JSONResponse(await state.endpoints.respond_intro(conn, user_id, intro_id, status))


async def openapi(request: Request) -> Response:
    return JSONResponse(request.app.state.openapi)


ROUTES = [
    Route("/api/health", health),
    Route("/api/health/db", health_db),
    Route("/api/users/stats", user_stats),
    Route("/api/projects", feed),
    Route("/api/projects/{project_id}", project),
    Route("/api/leaderboard/projects", leaderboard_projects),
    Route("/api/leaderboard/builders", leaderboard_builders),
    Route("/api/chains", chains),
    Route("/api/chains/{slug}/posts", chain_posts),
    Route("/api/search", search),
    Route("/api/investors", investors),
    Route("/api/messages/conversations", conversations),
    Route("/api/intros/stats", intro_stats),
    Route("/api/votes", vote, methods=["POST"]),
    Route("/api/messages", send_message, methods=["POST"]),
    Route("/api/messages/{other_user_id}/read", mark_read, methods=["POST"]),
    Route("/api/intros", request_intro, methods=["POST"]),
    Route("/api/intros/{intro_id}/respond", respond_intro, methods=["POST"]),
    Route("/openapi.json", openapi),
]


def _required_relations(mode: str) -> tuple[str, ...]:
    return APP_TABLES + (AFTER_RELATIONS if mode == "after" else ())


def _readiness_problem(mode: str, missing: list[str]) -> EnvironmentProblem | None:
    if not missing:
        return None
    if mode == "after" and not set(missing) & set(APP_TABLES):
        return EnvironmentProblem(
            f"after mode needs every migration phase; missing: {', '.join(missing)}",
            hint="run `opskit migrate`, or serve --mode before",
        )
    return EnvironmentProblem(
        f"the database has no opskit app schema (missing: {', '.join(missing)})",
        hint="run `opskit seed --scale tiny` (or larger) first",
    )


async def _prepare_database(conn: psycopg.AsyncConnection, mode: str) -> None:
    """Refuse a database the mode cannot serve; give before mode the pg_trgm extension.

    Search means pg_trgm similarity of words in both modes (so both rank the same rows); phase 3
    installs the extension, and a before-mode database that never ran it gets it here.
    """
    cursor = await conn.execute(
        queries("endpoints.sql")["missing_relations"], {"names": list(_required_relations(mode))}
    )
    problem = _readiness_problem(mode, (await cursor.fetchone())[0])
    if problem:
        raise problem
    cursor = await conn.execute(queries("endpoints.sql")["pg_trgm_installed"])
    if not (await cursor.fetchone())[0]:
        try:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
            log.warning("installed the pg_trgm extension: search uses its similarity")
        except psycopg.Error as err:
            log.warning("pg_trgm is missing and cannot be installed, search answers 503: %s", err)


def create_app(
    settings: Settings,
    mode: str,
    database_url: str | None = None,
    redis_url: str | None = None,
    *,
    pool_size: int = DEFAULT_API_POOL_SIZE,
    answer_cache_s: float = 0.0,
) -> Starlette:
    """The API app for `mode` ('before' or 'after'); its lifespan opens the pool (and Redis).

    URLs default to the configured (or embedded) servers. Every pool connection is opened at
    start (min_size = max_size), so no request pays for a connect. `answer_cache_s` > 0 gives
    after mode the answer cache (opskit.app.answercache) with that time-to-live.
    """
    if mode not in MODES:
        raise BadInput(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    database_url = database_url or servers.resolve_database_url(settings)
    if mode == "after":
        redis_url = redis_url or servers.resolve_redis_url(settings)
    secret = auth.jwt_secret(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        pool = psycopg_pool.AsyncConnectionPool(
            database_url,
            min_size=pool_size,
            max_size=pool_size,
            timeout=POOL_TIMEOUT_S,
            kwargs={"autocommit": True, "options": CONNECTION_OPTIONS},
            open=False,
            name=f"opskit-api-{mode}",
        )
        await pool.open(wait=True, timeout=30)
        redis_client = redis_async_client(redis_url) if mode == "after" else None
        answers = None
        if mode == "after" and answer_cache_s > 0:
            answers = AnswerCache(database_url, answer_cache_s)
        try:
            async with pool.connection() as conn:
                await _prepare_database(conn, mode)
            vote_cache = VoteCache(redis_client, settings.redis_prefix) if redis_client else None
            app.state.api = ApiState(
                mode=mode,
                tokens=VerifiedTokens(secret),
                pool=pool,
                endpoints=Endpoints(mode, vote_cache),
                redis=redis_client,
                answers=answers,
            )
            if answers is not None:
                await answers.start()
            log.info("API in %s mode on %s, pool of %d", mode, mask_url(database_url), pool_size)
            yield
        finally:
            if answers is not None:
                await answers.stop()
            if redis_client is not None:
                await redis_client.aclose()
            await pool.close()

    app = Starlette(
        routes=ROUTES,
        lifespan=lifespan,
        middleware=[Middleware(ServerTiming)],
        exception_handlers={
            ApiError: _api_error,
            HTTPException: _http_error,
            psycopg.OperationalError: _database_unavailable,
            psycopg_pool.PoolTimeout: _database_unavailable,
            psycopg.DataError: _bad_value,
            Exception: _internal_error,
        },
    )
    app.state.openapi = openapi_document(mode)
    return app


def app_from_environment() -> Starlette:
    """The app factory uvicorn's worker processes import (`opskit serve --workers N`)."""
    return create_app(
        Settings.from_env(),
        os.environ[ENV_MODE],
        pool_size=int(os.environ.get(ENV_POOL_SIZE, DEFAULT_API_POOL_SIZE)),
        answer_cache_s=float(os.environ.get(ENV_ANSWER_CACHE_S, 0)),
    )


# ---------------------------------------------------------------------------- serving


def check_database(settings: Settings, mode: str) -> str:
    """The database URL to serve from, after checking it has what the mode reads (exit 3 if not)."""
    url = servers.resolve_database_url(settings)
    with connect(url, autocommit=True) as conn:
        row = conn.execute(
            queries("endpoints.sql")["missing_relations"],
            {"names": list(_required_relations(mode))},
        ).fetchone()
    problem = _readiness_problem(mode, row[0])
    if problem:
        raise problem
    return url


def _check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as err:
            raise EnvironmentProblem(
                f"cannot listen on {host}:{port}: {err.strerror}",
                hint="pick another --port (or --host)",
            ) from err


def serve(
    settings: Settings,
    mode: str,
    *,
    host: str,
    port: int,
    workers: int = 1,
    pool_size: int = DEFAULT_API_POOL_SIZE,
    answer_cache_s: float = DEFAULT_ANSWER_CACHE_S,
) -> None:
    """Run the API until interrupted: uvicorn with uvloop and httptools, `workers` processes.

    One process serves from one event loop; with workers > 1 uvicorn starts that many processes
    on the same socket, each with its own pool of pool_size connections.
    """
    if mode not in MODES:
        raise BadInput(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    database_url = check_database(settings, mode)
    redis_url = None
    if mode == "after":
        redis_url = servers.resolve_redis_url(settings)
        redis_client(redis_url).close()  # ConnectFailed (exit 3) now rather than per request
    _check_port_free(host, port)
    options = dict(
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level="warning",
        backlog=4096,
        timeout_keep_alive=KEEP_ALIVE_S,
    )
    if workers == 1:
        app = create_app(
            settings, mode, database_url, redis_url, pool_size=pool_size,
            answer_cache_s=answer_cache_s,
        )  # fmt: skip
        uvicorn.run(app, **options)
        return
    os.environ.update(
        {
            ENV_MODE: mode,
            ENV_POOL_SIZE: str(pool_size),
            ENV_ANSWER_CACHE_S: str(answer_cache_s),
            "OPSKIT_DATABASE_URL": database_url,
            **({"OPSKIT_REDIS_URL": redis_url} if redis_url else {}),
        }
    )
    # A loaded 2-core box can stall a worker's health ping for seconds; uvicorn's default (5 s)
    # then kills and respawns workers in a loop.
    uvicorn.run(
        "opskit.app.api:app_from_environment",
        factory=True,
        workers=workers,
        timeout_worker_healthcheck=WORKER_HEALTHCHECK_TIMEOUT_S,
        **options,
    )
