"""`opskit capacity`: a short real ramp against `opskit serve` on a migrated tiny database."""

from __future__ import annotations

import http.client
import json
import time
import urllib.parse

import pytest
from typer.testing import CliRunner

from opskit.app.api import KEEP_ALIVE_S
from opskit.benchmarking import api_process, capacity
from opskit.cli import app
from opskit.core.errors import BadInput
from opskit.core.servers import free_port
from opskit.core.settings import Settings

STEP_KEYS = {"users", "rps", "p50_ms", "p99_ms", "errors", "generator_cpu", "flagged"}


@pytest.fixture
def settings(monkeypatch, redis_prefix) -> Settings:
    monkeypatch.setenv("OPSKIT_REDIS_PREFIX", redis_prefix)  # the server subprocess inherits it
    return Settings.from_env()


def _ramp(migrated_db_url, redis_url, *extra: str):
    result = CliRunner().invoke(
        app,
        ["capacity", "--mode", "after", "--step-seconds", "3", "--think", "0.1-0.3", "--json"]
        + ["--server-workers", "1", *extra],
        env={"OPSKIT_DATABASE_URL": migrated_db_url, "OPSKIT_REDIS_URL": redis_url},
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.slow
def test_a_ramp_runs_every_step_it_holds_and_reports_them(migrated_db_url, redis_url, settings):
    # A minute of p99 holds on any machine: every step runs, whatever this one's speed.
    answer = _ramp(
        migrated_db_url, redis_url, "--users-max", "5", "--step", "2", "--slo-p99", "60000"
    )

    assert [step["users"] for step in answer["steps"]] == [2, 4, 5], answer
    for step in answer["steps"]:
        assert step.keys() >= STEP_KEYS
        assert step["rps"] > 0 and step["errors"] == 0 and step["held"]
        assert 0 < step["p50_ms"] <= step["p99_ms"]
        assert isinstance(step["flagged"], bool) and step["flagged"] == bool(step["flags"])
    held = [s["users"] for s in answer["steps"] if not s["flagged"]]
    assert answer["held_users"] == max(held, default=0)
    assert answer["stopped_by"] == "users_max"
    assert answer["server"]["workers"] == 1 and answer["server"]["pool_size"] >= 2


@pytest.mark.slow
def test_the_ramp_stops_after_the_first_step_over_the_slo(migrated_db_url, redis_url, settings):
    # No answer comes back in a microsecond: the first step breaks the SLO and ends the ramp.
    answer = _ramp(
        migrated_db_url, redis_url, "--users-max", "6", "--step", "2", "--slo-p99", "0.001"
    )

    assert [step["users"] for step in answer["steps"]] == [2]
    assert not answer["steps"][0]["held"]
    assert answer["held_users"] == 0 and answer["stopped_by"] == "slo"


def test_a_url_serving_the_other_mode_is_refused(settings, migrated_db_url, redis_url):
    plan = capacity.CapacityPlan(
        mode="before", users_max=2, step=1, step_s=2, think_min_s=0.1, think_max_s=0.2
    )
    with (
        api_process.api_server(settings, "after", migrated_db_url, redis_url) as url,
        pytest.raises(BadInput, match="serves mode 'after'"),
    ):
        capacity.capacity(settings, plan, url=url, database_url=migrated_db_url)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--think", "5-1"], "--think '5-1'"),
        (["--think", "fast"], "is not MIN-MAX seconds"),
        (["--users-max", "0"], "--users-max"),
        (["--step", "0"], "--step"),
        (["--step-seconds", "1"], "--step-seconds"),
        (["--slo-p99", "-5"], "--slo-p99"),
        (["--scenario", "nope"], "unknown scenario 'nope'"),
    ],
)
def test_bad_options_exit_2_with_one_line(args, message):
    result = CliRunner().invoke(app, ["capacity", "--mode", "after", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_an_unreachable_api_exits_3(migrated_db_url):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result = CliRunner().invoke(
        app,
        ["capacity", "--mode", "after", "--url", url],
        env={"OPSKIT_DATABASE_URL": migrated_db_url},
    )
    assert result.exit_code == 3, result.output
    assert "unreachable" in result.output


def test_a_connection_idle_for_the_longest_think_time_is_still_open(
    settings, migrated_db_url, redis_url
):
    """A user thinks up to 5 s between requests on one keep-alive connection: the server must
    not close it meanwhile (uvicorn's default, 5 s, lost the request of a user sending just as
    the server closed its connection)."""
    assert KEEP_ALIVE_S > 5
    with api_process.api_server(settings, "after", migrated_db_url, redis_url) as url:
        address = urllib.parse.urlsplit(url)
        conn = http.client.HTTPConnection(address.hostname, address.port, timeout=10)
        conn.request("GET", "/api/health")
        assert conn.getresponse().read() and conn.sock is not None
        time.sleep(5.5)
        conn.request("POST", "/api/votes", body=b"{}")  # not retried by clients: must arrive
        response = conn.getresponse()
        response.read()
        assert response.status == 401  # reached the server (no token), on the same connection
