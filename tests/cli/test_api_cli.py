"""`opskit token` and `opskit serve`: output, exit codes and one-line errors."""

import pytest
from typer.testing import CliRunner

from opskit.app.auth import user_id_from_token
from opskit.cli import app


@pytest.fixture
def run():
    runner = CliRunner()

    def invoke(*args: str, env: dict[str, str] | None = None):
        return runner.invoke(app, list(args), env=env, catch_exceptions=False)

    return invoke


def test_token_prints_a_token_the_server_accepts(run):
    result = run("token", "42", "--ttl", "60", env={"OPSKIT_JWT_SECRET": "s" * 40})
    assert result.exit_code == 0
    assert user_id_from_token("s" * 40, result.output.strip()) == 42


@pytest.mark.parametrize("args", [("0",), ("-5",), ("abc",), ("1", "--ttl", "0"), ()])
def test_token_bad_input_exits_2(run, args):
    result = run("token", *args)
    assert result.exit_code == 2


def test_serve_refuses_an_unknown_mode(run):
    assert run("serve", "--mode", "sideways").exit_code == 2


def test_serve_after_mode_needs_every_phase(run, tiny_db_url, redis_url):
    result = run(
        "serve",
        "--mode",
        "after",
        env={"OPSKIT_DATABASE_URL": tiny_db_url, "OPSKIT_REDIS_URL": redis_url},
    )
    assert result.exit_code == 3
    assert "after mode needs every migration phase" in result.output
    assert "opskit migrate" in result.output


def test_serve_without_a_schema_exits_3(run, empty_db_url):
    result = run("serve", "--mode", "before", env={"OPSKIT_DATABASE_URL": empty_db_url})
    assert result.exit_code == 3
    assert "no opskit app schema" in result.output
