"""Hostile input to every verb: wrong types, missing files, unreachable servers.

Each gets exit 2 (bad input) or 3 (environment) with one error line, and no traceback; a
rejected command leaves the database as it was.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from opskit.cli import app
from opskit.core.schema import table_fingerprints

# Servers that refuse connections, with a password that must never be printed.
PASSWORD = "s3cr3tpw"
UNREACHABLE = {
    "OPSKIT_DATABASE_URL": f"postgresql://user:{PASSWORD}@127.0.0.1:1/db",
    "OPSKIT_REDIS_URL": f"redis://:{PASSWORD}@127.0.0.1:1/0",
}
# Malformed URLs (an unclosed IPv6 bracket) with that password: bad input, still masked.
MALFORMED = {
    "OPSKIT_DATABASE_URL": f"postgresql://user:{PASSWORD}@[::1/db",
    "OPSKIT_REDIS_URL": f"redis://:{PASSWORD}@[::1/0",
}
REPORT = "{tmp}/report.html"

# (arguments, exit code) with no server configured. {tmp} is a folder, {file} a file in it.
WRONG_INPUT = [
    (["up", "--pg-port", "x"], 2),
    (["up", "--redis-port", "70000"], 2),
    (["down", "--bogus"], 2),
    (["env", "--bogus"], 2),
    (["seed", "--scale", "huge"], 2),
    (["seed", "--scale", "tiny", "--seed", "-1"], 2),
    (["seed"], 2),
    (["migrate", "--to", "phase9"], 2),
    (["migrate", "--lock-retries", "x"], 2),
    (["rollback", "--to", "nowhere"], 2),
    (["rollback"], 2),
    (["status", "extra"], 2),
    (["backfill", "--table", "nope"], 2),
    (["backfill", "--batch-size", "0"], 2),
    (["refresh", "--all"], 3),  # no server configured at all
    (["verify", "extra"], 2),
    (["bench-writes", "--writers", "many"], 2),
    (["bench-writes", "--seconds", "-1"], 2),
    (["lint", "extra"], 2),
    (["reconcile", "--fix=maybe"], 2),
    (["scheduler", "extra"], 2),
    (["report", "/nonexistent/a", "/nonexistent/b", "-o", REPORT], 2),
    (["report", "{file}", "{file}", "-o", REPORT], 2),
    (["report", "{tmp}", "{tmp}", "-o", REPORT], 2),
    (["report", "{tmp}", "{tmp}", "-o", REPORT, "--story", "/nonexistent/story.json"], 2),
    (["serve", "--mode", "sideways"], 2),
    (["serve", "--mode", "after", "--port", "0"], 2),
    (["token", "abc"], 2),
    (["token", "0"], 2),
    (["token", "5", "--ttl", "-3"], 2),
    (["bench-api", "--requests", "x"], 2),
    (["loadtest", "--mode", "after", "--out", "{tmp}/lt", "--rate", "x"], 2),
    (["loadtest", "--mode", "after", "--out", "{tmp}/lt", "--scenario", "nope", "--rate", "1"], 2),
    (["bench", "--rate", "x", "-o", REPORT], 2),
    (["soak", "--duration", "x"], 2),
    (["soak", "--faults", "bogus"], 2),
    (["soak", "--writers", "0"], 2),
]

# Every verb that needs a server, against UNREACHABLE: exit 3.
SERVER_VERBS = [
    ["status"],
    ["verify"],
    ["migrate"],
    ["rollback", "--to", "base"],
    ["backfill"],
    ["refresh", "--all"],
    ["reconcile"],
    ["scheduler"],
    ["seed", "--scale", "tiny"],
    ["serve", "--mode", "before", "--port", "18765"],
    ["bench-writes", "--seconds", "1"],
    ["bench-api", "--requests", "10"],
    ["soak", "--duration", "1"],
    [
        "loadtest",
        "--mode",
        "after",
        "--out",
        "{tmp}/lt",
        "--rate",
        "1",
        "--url",
        "http://127.0.0.1:1",
    ],
    ["bench", "-o", REPORT, "--duration", "1"],
]
# Verbs that need no server (or only print its URL): they succeed, and print no password.
NO_SERVER_NEEDED = [["up"], ["down"], ["env"], ["lint"], ["token", "3"]]


def fill(args: list[str], tmp_path) -> list[str]:
    (tmp_path / "file.txt").write_text("not a result folder")
    return [a.format(tmp=tmp_path, file=tmp_path / "file.txt") for a in args]


def invoke(args: list[str], env: dict[str, str] | None = None):
    return CliRunner().invoke(app, args, env=env)


def assert_one_error_line(result) -> None:
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    errors = [line for line in result.output.splitlines() if line.lower().startswith("error:")]
    assert len(errors) == 1, result.output


def _id(value) -> str:
    return " ".join(value)[:50] if isinstance(value, list) else str(value)


@pytest.mark.parametrize(("args", "code"), WRONG_INPUT, ids=_id)
def test_wrong_input_exits_2_with_one_line(args, code, tmp_path):
    result = invoke(fill(args, tmp_path))
    assert result.exit_code == code, result.output
    assert_one_error_line(result)


@pytest.mark.parametrize("args", SERVER_VERBS, ids=_id)
@pytest.mark.parametrize(
    ("servers", "code"), [(UNREACHABLE, 3), (MALFORMED, 2)], ids=["unreachable", "malformed"]
)
def test_bad_server_urls_exit_3_or_2_with_one_line_and_no_password(servers, code, args, tmp_path):
    result = invoke(fill(args, tmp_path), servers)
    assert result.exit_code == code, result.output
    assert_one_error_line(result)
    assert PASSWORD not in result.output


def test_a_malformed_redis_url_alone_exits_2(migrated_db_url):
    env = {
        "OPSKIT_DATABASE_URL": migrated_db_url,
        "OPSKIT_REDIS_URL": MALFORMED["OPSKIT_REDIS_URL"],
    }
    result = invoke(["reconcile"], env)
    assert result.exit_code == 2, result.output
    assert_one_error_line(result)
    assert PASSWORD not in result.output


@pytest.mark.parametrize("verb", ["status", "verify", "migrate", "reconcile"])
def test_json_verbs_print_their_error_as_one_object_on_stdout(verb):
    result = invoke([verb, "--json"], UNREACHABLE)
    assert result.exit_code == 3
    error = json.loads(result.stdout)
    assert error["exit_code"] == 3 and error["error"].startswith("cannot connect")
    assert PASSWORD not in result.stdout
    assert_one_error_line(result)  # and the usual line on stderr


def test_a_bad_environment_value_exits_2_naming_it():
    result = invoke(["status"], {"OPSKIT_REFRESH_POLL_S": "abc"})
    assert result.exit_code == 2
    assert_one_error_line(result)
    assert "OPSKIT_REFRESH_POLL_S" in result.output


def test_rejected_commands_leave_the_database_unchanged(migrated_db_url, redis_url, tmp_path):
    env = {"OPSKIT_DATABASE_URL": migrated_db_url, "OPSKIT_REDIS_URL": redis_url}
    before = _fingerprints(migrated_db_url)
    rejected = [
        (["seed", "--scale", "tiny"], {1}),  # holds data (and triggers)
        (["refresh", "no_such_view"], {2}),
        # later phases are applied (2); or a phase file changed since the template was
        # migrated, which the ledger check refuses first (1)
        (["migrate", "--to", "phase1_denormalized_tables"], {1, 2}),
        (["soak", "--faults", "daemon_kill,nonsense"], {2}),
        (["backfill", "--batch-size", "-5"], {2}),
    ]
    for args, codes in rejected:
        result = invoke(args, env)
        assert result.exit_code in codes, (args, result.output)
        assert_one_error_line(result)
        after = _fingerprints(migrated_db_url)
        assert after == before, (args, [t for t in after if after[t] != before[t]])


def _fingerprints(url: str) -> dict[str, str]:
    import psycopg

    with psycopg.connect(url) as conn:
        return table_fingerprints(conn)
