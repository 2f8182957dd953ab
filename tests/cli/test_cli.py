"""Exit codes and messages of the CLI, run through Typer's CliRunner against real servers."""

import json
import socket

import pytest
import typer.main
from typer.testing import CliRunner

from opskit.cli import app

VERBS = sorted(typer.main.get_command(app).commands)  # from the app itself: none forgotten


@pytest.fixture
def run():
    runner = CliRunner()

    def invoke(*args: str, env: dict[str, str] | None = None):
        return runner.invoke(app, list(args), env=env, catch_exceptions=False)

    return invoke


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_explains_itself(run, verb):
    result = run(verb, "--help")
    assert result.exit_code == 0
    assert len(result.output.split("\n\n")[1].strip()) > 20  # a real description, not a stub


def test_top_level_help_lists_the_verbs_and_the_environment(run):
    result = run("--help")
    assert result.exit_code == 0
    listed = {line.split()[0] for line in result.output.splitlines() if line.startswith("  ")}
    assert set(VERBS) <= listed
    for word in ("OPSKIT_DATABASE_URL", "OPSKIT_HOME"):
        assert word in result.output


def test_no_database_exits_3_with_the_documented_line(run):
    result = run("seed", "--scale", "tiny")
    assert result.exit_code == 3
    assert "no database: set OPSKIT_DATABASE_URL or run `opskit up`" in result.output
    assert "Traceback" not in result.output


def test_unreachable_database_exits_3_and_masks_the_password(run):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once the socket closes
    url = f"postgresql://app:hunter2@127.0.0.1:{port}/app"
    result = run("seed", "--scale", "tiny", env={"OPSKIT_DATABASE_URL": url})
    assert result.exit_code == 3
    assert "hunter2" not in result.output
    assert "app:***@" in result.output


def test_unknown_role_exits_3_and_masks_the_password(run, test_servers):
    import psycopg

    url = psycopg.conninfo.conninfo_to_dict(test_servers.admin_url)
    bad = f"postgresql://nobody_here:hunter2@{url.get('host', '127.0.0.1')}:{url.get('port', 5432)}/postgres"
    result = run("seed", "--scale", "tiny", env={"OPSKIT_DATABASE_URL": bad})
    assert result.exit_code == 3
    assert "hunter2" not in result.output


@pytest.mark.parametrize(
    "args",
    [
        ("seed", "--scale", "huge"),
        ("seed", "--scale", "tiny", "--seed", "-1"),
        ("seed", "--scale", "tiny", "--seed", "many"),
        ("seed",),
        ("up", "--pg-port", "70000"),
        ("no-such-verb",),
    ],
)
def test_bad_usage_exits_2(run, args):
    result = run(*args)
    assert result.exit_code == 2


def test_bad_environment_value_exits_2(run):
    result = run("env", env={"OPSKIT_REFRESH_POLL_S": "-1"})
    assert result.exit_code == 2
    assert "OPSKIT_REFRESH_POLL_S" in result.output


def test_seed_json_then_refusal_then_force(run, base_db_url):
    env = {"OPSKIT_DATABASE_URL": base_db_url}
    result = run("seed", "--scale", "tiny", "--json", env=env)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["row_counts"]["users"] == 200
    assert {load["table"] for load in payload["loads"]} >= {"users", "votes", "messages"}

    refused = run("seed", "--scale", "tiny", env=env)
    assert refused.exit_code == 1
    assert "--force" in refused.output

    forced = run("seed", "--scale", "tiny", "--seed", "7", "--force", env=env)
    assert forced.exit_code == 0
    assert "rows/s" in forced.output


def test_debug_shows_the_traceback(run):
    with pytest.raises(Exception, match="no database"):
        run("--debug", "seed", "--scale", "tiny")


def test_env_prints_export_lines_for_urls_in_use(run):
    env = {"OPSKIT_DATABASE_URL": "postgresql://app:pw@db/x", "OPSKIT_REDIS_URL": "redis://c:1/0"}
    result = run("env", env=env)
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [
        "export OPSKIT_DATABASE_URL='postgresql://app:***@db/x'",
        "export OPSKIT_REDIS_URL=redis://c:1/0",
    ]
