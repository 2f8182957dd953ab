"""Real servers for every test: PostgreSQL and a Redis-protocol server, never fakes.

OPSKIT_TEST_DATABASE_URL / OPSKIT_TEST_REDIS_URL name servers to use (an unreachable one stops
the run); otherwise embedded servers are started once per session in a temporary folder. Each
test gets its own database cloned from a template (`CREATE DATABASE ... TEMPLATE`) and its own
Redis key prefix.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import redis
from psycopg import sql

from opskit.benchmarking import seed
from opskit.core import schema, servers
from opskit.engine import migrations

REPO_ROOT = Path(__file__).resolve().parents[1]
_names = itertools.count()


@dataclass(frozen=True)
class TestServers:
    admin_url: str  # a maintenance database on the server, for CREATE/DROP DATABASE
    redis_url: str

    def database_url(self, name: str) -> str:
        return psycopg.conninfo.make_conninfo(self.admin_url, dbname=name)


def _unique_name(kind: str) -> str:
    return f"opskit_{kind}_{os.getpid()}_{next(_names)}"


@pytest.fixture(scope="session")
def test_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestServers]:
    database_url = os.environ.get("OPSKIT_TEST_DATABASE_URL")
    redis_url = os.environ.get("OPSKIT_TEST_REDIS_URL")
    home = tmp_path_factory.mktemp("servers")
    if not (database_url and redis_url):
        status, _ = servers.up(
            home,
            pg_port=0,
            redis_port=0,
            start_postgres=not database_url,
            start_valkey=not redis_url,
        )
        database_url = database_url or status.postgres.url
        redis_url = redis_url or status.valkey.url
    try:
        psycopg.connect(database_url, connect_timeout=5).close()
    except psycopg.OperationalError as err:
        pytest.exit(f"OPSKIT_TEST_DATABASE_URL is unreachable: {err}", returncode=3)
    try:
        redis.Redis.from_url(redis_url, socket_connect_timeout=5).ping()
    except redis.RedisError as err:
        pytest.exit(f"OPSKIT_TEST_REDIS_URL is unreachable: {err}", returncode=3)
    yield TestServers(admin_url=database_url, redis_url=redis_url)
    servers.down(home)


def _create_database(servers: TestServers, name: str, template: str | None = None) -> str:
    with psycopg.connect(servers.admin_url, autocommit=True) as conn:
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        conn.execute(statement)
    return servers.database_url(name)


def _drop_database(servers: TestServers, name: str) -> None:
    with psycopg.connect(servers.admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture(scope="session")
def base_template(test_servers: TestServers) -> Iterator[str]:
    """Name of a template database holding the base schema and no rows."""
    name = _unique_name("tpl_base")
    url = _create_database(test_servers, name)
    with psycopg.connect(url) as conn:
        schema.create_base_schema(conn)
    yield name
    _drop_database(test_servers, name)


@pytest.fixture(scope="session")
def tiny_template(test_servers: TestServers) -> Iterator[str]:
    """Name of a template database seeded with `tiny` data (seed 1)."""
    name = _unique_name("tpl_tiny")
    seed.seed_database(_create_database(test_servers, name), "tiny", 1)
    yield name
    _drop_database(test_servers, name)


@pytest.fixture(scope="session")
def migrated_template(test_servers: TestServers, tiny_template: str) -> Iterator[str]:
    """Name of a template database: `tiny` data (seed 1) with every phase applied.

    Phase 2 and 3 create their views populated, so the views match the data without a refresh.
    """
    name = _unique_name("tpl_migrated")
    migrations.migrate(_create_database(test_servers, name, tiny_template))
    yield name
    _drop_database(test_servers, name)


@pytest.fixture
def fresh_database(test_servers: TestServers):
    """Factory: a new database (optionally cloned from a template), dropped after the test."""
    created: list[str] = []

    def make(template: str | None = None) -> str:
        name = _unique_name("t")
        created.append(name)
        return _create_database(test_servers, name, template)

    yield make
    for name in created:
        _drop_database(test_servers, name)


@pytest.fixture
def empty_db_url(fresh_database) -> str:
    """URL of a new, empty database."""
    return fresh_database()


@pytest.fixture
def base_db_url(fresh_database, base_template: str) -> str:
    """URL of a new database with the base schema and no rows."""
    return fresh_database(base_template)


@pytest.fixture
def tiny_db_url(fresh_database, tiny_template: str) -> str:
    """URL of a new database with `tiny` data (seed 1)."""
    return fresh_database(tiny_template)


@pytest.fixture
def migrated_db_url(fresh_database, migrated_template: str) -> str:
    """URL of a new database with `tiny` data (seed 1) and every phase applied."""
    return fresh_database(migrated_template)


@pytest.fixture
def redis_url(test_servers: TestServers) -> str:
    return test_servers.redis_url


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix no other test uses; its keys are deleted after the test."""
    prefix = f"opskit-test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test reads the developer's own OPSKIT_* settings or state folder."""
    for name in list(os.environ):
        if (name.startswith("OPSKIT_") and not name.startswith("OPSKIT_TEST_")) or name in (
            "DATABASE_URL",
            "REDIS_URL",
        ):
            monkeypatch.delenv(name)
    monkeypatch.setenv("OPSKIT_HOME", str(tmp_path / "opskit-home"))
