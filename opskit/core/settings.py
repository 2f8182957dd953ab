"""One frozen settings object, built once from the environment (docs/interface.md §1)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict
from redis.connection import parse_url as parse_redis_url

from opskit.core.errors import ConfigError, first_line

DEFAULT_API_POOL_SIZE = 8  # database connections per API process

ENVIRONMENT_HELP = """\
Environment: OPSKIT_DATABASE_URL (else DATABASE_URL), OPSKIT_REDIS_URL (else REDIS_URL),
OPSKIT_HOME (default ./.opskit), OPSKIT_JWT_SECRET, OPSKIT_REDIS_PREFIX (default opskit:),
OPSKIT_REFRESH_POLL_S (1), OPSKIT_REFRESH_WORKERS (3),
OPSKIT_RECONCILE_CRON (0 3 * * *, UTC), OPSKIT_RECONCILE_CHANGED_S (60),
OPSKIT_TRENDING_MAX_AGE_S (300)."""


# Settings of the full-refresh design, refused when set (docs/freshness.md).
RETIRED = ("OPSKIT_REFRESH_DEBOUNCE_S", "OPSKIT_REFRESH_MAX_WAIT_S")


@dataclass(frozen=True)
class Settings:
    database_url: str | None
    redis_url: str | None
    home: Path
    jwt_secret: str | None
    redis_prefix: str
    refresh_poll_s: float
    refresh_workers: int
    reconcile_cron: str
    trending_max_age_s: float
    reconcile_changed_s: float = 60.0  # the daemon's `reconcile --changed --fix` interval

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and validate every OPSKIT_* variable; raise ConfigError naming the bad one."""
        env = os.environ if environ is None else environ
        for name in RETIRED:
            if env.get(name):
                raise ConfigError(
                    f"{name} is retired: views are no longer refreshed whole after a debounce, "
                    "the daemon applies their changes every OPSKIT_REFRESH_POLL_S",
                    hint=f"unset {name} (see docs/freshness.md)",
                )
        return cls(
            database_url=_database_url(env),
            redis_url=_redis_url(env),
            home=Path(env.get("OPSKIT_HOME") or ".opskit").expanduser().absolute(),
            jwt_secret=env.get("OPSKIT_JWT_SECRET") or None,
            redis_prefix=env.get("OPSKIT_REDIS_PREFIX", "opskit:"),
            refresh_poll_s=_positive_float(env, "OPSKIT_REFRESH_POLL_S", 1.0),
            refresh_workers=_positive_int(env, "OPSKIT_REFRESH_WORKERS", 3),
            reconcile_cron=_crontab(env, "OPSKIT_RECONCILE_CRON", "0 3 * * *"),
            trending_max_age_s=_positive_float(env, "OPSKIT_TRENDING_MAX_AGE_S", 300.0),
            reconcile_changed_s=_positive_float(env, "OPSKIT_RECONCILE_CHANGED_S", 60.0),
        )


def _first(env: Mapping[str, str], *names: str) -> tuple[str, str | None]:
    """The first of `names` that is set, and its value (the last name and None if none is)."""
    for name in names:
        if env.get(name):
            return name, env[name]
    return names[-1], None


def _database_url(env: Mapping[str, str]) -> str | None:
    name, url = _first(env, "OPSKIT_DATABASE_URL", "DATABASE_URL")
    if url is not None:
        try:
            conninfo_to_dict(url)  # parses only: a malformed URL is bad input, not a dead server
        except psycopg.ProgrammingError as err:
            reason = first_line(err).replace(url, mask_url(url))
            raise ConfigError(
                f"{name} is not a PostgreSQL URL: {mask_url(url)} ({reason})",
                hint="use postgresql://user:password@host:port/dbname",
            ) from None
    return url


def _redis_url(env: Mapping[str, str]) -> str | None:
    name, url = _first(env, "OPSKIT_REDIS_URL", "REDIS_URL")
    if url is not None:
        try:
            parsed = parse_redis_url(url)  # a unix:// URL has a socket path, not a database
        except ValueError as err:
            reason = first_line(err).replace(url, mask_url(url))
            raise ConfigError(
                f"{name} is not a Redis URL: {mask_url(url)} ({reason})",
                hint="use redis://host:port/0",
            ) from None
        database = urlsplit(url).path.strip("/")
        if "path" not in parsed and database and not database.isdigit():
            raise ConfigError(  # redis-py would quietly use database 0
                f"{name} names no database number: {mask_url(url)}", hint="use redis://host:port/0"
            )
    return url


def _positive_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number", hint="use seconds, e.g. 2.5") from None
    if not value > 0 or value == float("inf"):
        raise ConfigError(f"{name}={raw!r} must be a positive number of seconds")
    return value


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number") from None
    if value < 1:
        raise ConfigError(f"{name}={raw!r} must be at least 1")
    return value


def _crontab(env: Mapping[str, str], name: str, default: str) -> str:
    raw = env.get(name) or default
    from apscheduler.triggers.cron import CronTrigger

    try:
        CronTrigger.from_crontab(raw, timezone="UTC")
    except ValueError as err:
        raise ConfigError(
            f"{name}={raw!r} is not a crontab expression ({err})",
            hint="use five fields: minute hour day month weekday, e.g. '0 3 * * *'",
        ) from None
    return raw


_CONNINFO_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
_QUERY_PASSWORD = re.compile(r"(?i)([?&]password=)[^&#]*")
# scheme://user: then the password, up to the last @ (a password may hold an unencoded / or @)
_USERINFO_PASSWORD = re.compile(r"^([^:/?#]+://[^/?#@:]*:).*@")


def mask_url(url: str | None) -> str:
    """The URL (or libpq conninfo string) with its password replaced by ***; never raises."""
    if not url:
        return ""
    if "://" not in url:
        return _CONNINFO_PASSWORD.sub(r"\1***", url)
    # Text edits only, no parsing: the URL stays as given, and a URL that does not parse (an
    # unclosed IPv6 bracket, say) is masked all the same.
    return _USERINFO_PASSWORD.sub(r"\1***@", _QUERY_PASSWORD.sub(r"\1***", url))
