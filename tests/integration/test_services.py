"""`opskit up` / `down` / `env` against the real embedded servers in a private OPSKIT_HOME."""

import json
import os
import socket

import psycopg
import pytest
import redis
from typer.testing import CliRunner

from opskit.cli import app
from opskit.core import servers


@pytest.fixture
def home(tmp_path):
    path = tmp_path / "home"
    yield path
    servers.down(path)


def _run(*args, env=None):
    return CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)


def test_up_is_idempotent_env_points_at_it_and_down_stops_it(home):
    env = {"OPSKIT_HOME": str(home)}
    first = _run("up", "--pg-port", "0", "--redis-port", "0", "--json", env=env)
    assert first.exit_code == 0, first.output
    started = json.loads(first.stdout)
    assert started["started"] == ["postgres", "valkey"]

    second = _run("up", "--json", env=env)
    assert second.exit_code == 0
    again = json.loads(second.stdout)
    assert again["started"] == []
    assert again["postgres"]["pid"] == started["postgres"]["pid"]

    exports = dict(
        line.removeprefix("export ").split("=", 1)
        for line in _run("env", env=env).stdout.splitlines()
    )
    with psycopg.connect(exports["OPSKIT_DATABASE_URL"]) as conn:
        assert conn.execute("SELECT current_database()").fetchone()[0] == "opskit"
        extensions = {row[0] for row in conn.execute("SELECT name FROM pg_available_extensions")}
        assert {"pg_trgm", "pg_stat_statements"} <= extensions
        assert conn.execute("SHOW synchronous_commit").fetchone()[0] == "off"
    assert redis.Redis.from_url(exports["OPSKIT_REDIS_URL"]).ping()

    stopped = _run("down", "--json", env=env)
    assert json.loads(stopped.stdout) == {"stopped": ["postgres", "valkey"]}
    assert _run("down", env=env).output.strip() == "no embedded server was running"
    assert servers.status(home) == servers.ServersStatus(None, None)
    assert _run("env", env=env).exit_code == 3

    # data survives a restart
    restarted = _run("up", "--pg-port", "0", "--redis-port", "0", "--json", env=env)
    assert restarted.exit_code == 0


def test_servers_outlive_the_process_that_started_them(home):
    import subprocess
    import sys

    subprocess.run(
        [sys.executable, "-m", "opskit", "up", "--pg-port", "0", "--redis-port", "0"],
        env={**os.environ, "OPSKIT_HOME": str(home)},
        check=True,
        capture_output=True,
    )
    status = servers.status(home)
    assert status.postgres is not None and status.valkey is not None


def test_a_taken_port_is_an_environment_error(home):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = _run("up", "--pg-port", str(port), env={"OPSKIT_HOME": str(home)})
    assert result.exit_code == 3
    assert f"port {port}" in result.output and "--pg-port" in result.output
    assert servers.status(home).postgres is None


def test_a_taken_redis_port_starts_nothing_and_leaves_nothing_running(home):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = _run(
            "up", "--pg-port", "0", "--redis-port", str(port), env={"OPSKIT_HOME": str(home)}
        )
    assert result.exit_code == 3
    assert "--redis-port" in result.output
    state = servers.status(home)
    assert (state.postgres, state.valkey) == (None, None)


def test_configured_urls_mean_nothing_is_started(home, test_servers):
    env = {
        "OPSKIT_HOME": str(home),
        "OPSKIT_DATABASE_URL": test_servers.admin_url,
        "OPSKIT_REDIS_URL": test_servers.redis_url,
    }
    result = _run("up", "--json", env=env)
    assert result.exit_code == 0
    assert json.loads(result.stdout)["started"] == []
    assert servers.status(home) == servers.ServersStatus(None, None)
