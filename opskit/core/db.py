"""The database and Redis boundary: connect, and turn driver errors into opskit errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import redis

from opskit.core.errors import ConfigError, ConnectFailed, first_line
from opskit.core.settings import mask_url

CONNECT_TIMEOUT_S = 5


def _connect_hint(message: str) -> str:
    if "password authentication failed" in message or "no password supplied" in message:
        return "check the user and password in the database URL"
    if "role" in message and "does not exist" in message:
        return "check the user name in the database URL"
    if "does not exist" in message and "database" in message:
        return "create that database, or point OPSKIT_DATABASE_URL at an existing one"
    if "Connection refused" in message or "timeout expired" in message:
        return "is the server running? `opskit up` starts the embedded one"
    return "check the database URL and that the server accepts connections"


def _reason(err: Exception, url: str) -> str:
    """The driver's first line, with the URL masked wherever the driver quotes it."""
    return first_line(err).replace(url, mask_url(url))


def connect(url: str, *, autocommit: bool = False, **kwargs) -> psycopg.Connection:
    """Open a psycopg connection: ConfigError (exit 2) for a malformed URL, ConnectFailed (exit 3)
    for one that cannot be reached."""
    try:
        return psycopg.connect(
            url, autocommit=autocommit, connect_timeout=CONNECT_TIMEOUT_S, **kwargs
        )
    except psycopg.OperationalError as err:
        reason = _reason(err, url).removeprefix("connection failed: ")
        raise ConnectFailed(
            f"cannot connect to {mask_url(url)}: {reason}", hint=_connect_hint(str(err))
        ) from err
    except psycopg.ProgrammingError as err:  # malformed conninfo: bad input (exit 2)
        raise ConfigError(
            f"invalid database URL {mask_url(url)}: {_reason(err, url)}",
            hint="use postgresql://user:password@host:port/dbname",
        ) from err


@contextmanager
def connection(url: str, *, autocommit: bool = False) -> Iterator[psycopg.Connection]:
    with connect(url, autocommit=autocommit) as conn:
        yield conn


def redis_client(url: str) -> redis.Redis:
    """A Redis client that has answered PING: ConfigError (exit 2) for a malformed URL,
    ConnectFailed (exit 3) for one that cannot be reached."""
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT_S)
        client.ping()
    except ValueError as err:  # malformed URL: bad input (exit 2)
        raise ConfigError(
            f"invalid Redis URL {mask_url(url)}: {_reason(err, url)}",
            hint="use redis://host:port/0",
        ) from err
    except redis.RedisError as err:
        raise ConnectFailed(
            f"cannot connect to Redis at {mask_url(url)}: {_reason(err, url)}",
            hint="is the server running? `opskit up` starts the embedded one",
        ) from err
    return client
