"""`opskit loadtest` against a real `opskit serve` subprocess on a migrated tiny database."""

from __future__ import annotations

import csv
import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from opskit.benchmarking import api_process, loadtest
from opskit.benchmarking.loadtest import LoadPlan
from opskit.cli import app
from opskit.core import servers
from opskit.core.errors import BadInput, ConnectFailed, EnvironmentProblem
from opskit.core.settings import Settings

META_KEYS = {
    "format", "mode", "scenario", "model", "target_rate", "users", "duration_s", "warmup_s",
    "started_at", "finished_at", "repeat_index", "scale", "row_counts", "postgres", "redis",
    "cpu", "opskit_version", "git_commit", "target_url", "flags", "requests_total",
    "errors_total",
}  # fmt: skip
SIGNED_IN_REQUESTS = {
    "GET /api/users/stats", "GET /api/messages/conversations", "GET /api/intros/stats",
    "GET /api/projects?sort=trending [signed in]", "POST /api/votes", "POST /api/messages",
    "POST /api/messages/{other_user_id}/read",
}  # fmt: skip
RUN_FILES = {
    "meta.json", "requests.parquet", "seconds.parquet", "locust_stats.csv",
    "locust_stats_history.csv", "locust_failures.csv",
}  # fmt: skip


@pytest.fixture
def settings(monkeypatch, redis_prefix) -> Settings:
    monkeypatch.setenv("OPSKIT_REDIS_PREFIX", redis_prefix)  # the server subprocess inherits it
    return Settings.from_env()


@pytest.fixture
def results(tmp_path):
    """A folder for result folders only (OPSKIT_HOME is another folder of tmp_path)."""
    folder = tmp_path / "results"
    folder.mkdir()
    return folder


def _locust_request_count(run_dir) -> int:
    with (run_dir / "locust_stats.csv").open() as handle:
        rows = {row["Name"]: row for row in csv.DictReader(handle)}
    return int(rows["Aggregated"]["Request Count"])


@pytest.mark.slow
def test_open_model_on_two_workers_records_every_request_on_schedule(
    settings, migrated_db_url, redis_url, results
):
    plan = LoadPlan(mode="after", scenario="mixed", rate=30, duration_s=3, warmup_s=1, workers=2)
    ticks = []
    result = loadtest.loadtest(
        settings,
        plan,
        results / "after",
        database_url=migrated_db_url,
        redis_url=redis_url,
        progress=lambda *tick: ticks.append(tick),
    )

    run_dir = results / "after" / "run-01"
    assert sorted(p.name for p in (results / "after").iterdir()) == ["run-01"]
    assert {p.name for p in run_dir.iterdir()} >= RUN_FILES
    assert [p.name for p in results.iterdir()] == ["after"]  # no partial folder left behind

    requests = pd.read_parquet(run_dir / "requests.parquet")
    assert list(requests.columns) == [
        "endpoint", "intended_at", "started_at", "latency_ms", "ok", "status",
    ]  # fmt: skip
    assert str(requests["status"].dtype) == "int32" and requests["ok"].dtype == bool
    # Locust counted exactly the requests we recorded, each on its own slot of the one schedule
    # the two workers took turns on; all slots were sent, unless the machine was so busy that
    # the run fell behind (and then it says so).
    assert len(requests) == _locust_request_count(run_dir)
    meta = json.loads((run_dir / "meta.json").read_text())
    slots = (requests["intended_at"].sort_values().to_numpy() - meta["started_at"]) * plan.rate
    np.testing.assert_allclose(slots, np.round(slots), atol=1e-4)
    assert len(np.unique(np.round(slots))) == len(slots)
    schedule = np.arange(plan.load_s * plan.rate)
    assert set(np.round(slots)) <= set(schedule)
    # every slot was sent, or the run fell behind and says so
    assert len(slots) == len(schedule) or "rate_below_target" in meta["flags"], meta["flags"]
    # Never sent before its time; the corrected latency is never below the measured one.
    assert (requests["started_at"] >= requests["intended_at"] - 0.002).all()
    corrected = (requests["started_at"] - requests["intended_at"]) * 1000 + requests["latency_ms"]
    assert (corrected >= requests["latency_ms"] - 2).all()
    assert (requests["latency_ms"] > 0).all()
    assert requests["latency_ms"].round(3).ne(requests["latency_ms"].round(0)).any()  # sub-ms
    assert (requests["status"] // 100 == 2).all(), requests[requests["status"] // 100 != 2]
    assert "GET /api/projects/{id}" in set(requests["endpoint"])  # visitors ...
    assert set(requests["endpoint"]) & SIGNED_IN_REQUESTS  # ... and signed-in builders

    seconds = pd.read_parquet(run_dir / "seconds.parquet")
    assert list(seconds.columns) == [
        "second", "target_rate", "achieved_rate", "errors", "generator_cpu_pct",
    ]  # fmt: skip
    assert seconds["second"].tolist() == [0, 1, 2, 3]
    assert (seconds["target_rate"] == 30.0).all()
    assert seconds["achieved_rate"].sum() >= len(requests) - plan.rate  # the last may end late
    assert seconds["generator_cpu_pct"].notna().all() and (seconds["generator_cpu_pct"] >= 0).all()

    assert set(meta) >= META_KEYS
    assert meta["format"] == 1 and meta["mode"] == "after" and meta["model"] == "open"
    assert meta["target_rate"] == 30.0 and meta["scenario"] == "mixed"
    assert meta["finished_at"] == pytest.approx(meta["started_at"] + 4)
    assert meta["row_counts"]["users"] == 200 and meta["scale"] == "tiny"
    assert meta["postgres"]["version"] and "shared_buffers" in meta["postgres"]["settings"]
    assert meta["redis"]["version"] and meta["cpu"]["cores"] >= 1
    assert meta["requests_total"] == len(requests) and meta["errors_total"] == 0
    assert meta["target_url"] == result.target_url
    assert result.runs[0].requests_total == len(requests)
    assert ticks and ticks[-1][0] == "after" and ticks[-1][1] == 1


@pytest.mark.slow
def test_closed_model(settings, migrated_db_url, redis_url, results):
    plan = LoadPlan(
        mode="before", scenario="browse", users=4, spawn_rate=4, duration_s=2, warmup_s=1
    )
    result = loadtest.loadtest(
        settings, plan, results / "out", database_url=migrated_db_url, redis_url=redis_url
    )

    assert [r.repeat_index for r in result.runs] == [1]
    for run in ("run-01",):
        run_dir = results / "out" / run
        requests = pd.read_parquet(run_dir / "requests.parquet")
        assert len(requests) == _locust_request_count(run_dir) > 0
        assert requests["intended_at"].isna().all()
        assert not requests["endpoint"].str.startswith("POST").any()  # visitors only read
        meta = json.loads((run_dir / "meta.json").read_text())
        assert meta["model"] == "closed" and meta["target_rate"] is None
        assert meta["users"] == 4 and meta["workers"] == 0 and meta["mode"] == "before"
        seconds = pd.read_parquet(run_dir / "seconds.parquet")
        assert seconds["target_rate"].isna().all() and len(seconds) == 3


def test_a_url_serving_the_other_mode_is_refused(settings, migrated_db_url, redis_url, results):
    with api_process.api_server(settings, "after", migrated_db_url, redis_url) as url:
        plan = LoadPlan(mode="before", scenario="browse", rate=5, duration_s=1)
        with pytest.raises(BadInput, match="serves mode 'after'"):
            loadtest.loadtest(
                settings,
                plan,
                results / "out",
                url=url,
                database_url=migrated_db_url,
                redis_url=redis_url,
            )
    assert list(results.iterdir()) == []


def test_a_server_that_cannot_start_is_reported_with_its_last_line(
    settings, tiny_db_url, redis_url, results
):
    # after mode refuses a database without the migration phases, and exits
    with (
        pytest.raises(EnvironmentProblem, match="exited with code 3") as caught,
        api_process.api_server(
            settings, "after", tiny_db_url, redis_url, log_path=results / "api.log"
        ),
    ):
        pass
    assert caught.value.exit_code == 3
    assert caught.value.hint and "migrate" in caught.value.hint


def test_an_unreachable_api_exits_3_and_leaves_no_folder(
    settings, migrated_db_url, redis_url, results
):
    url = f"http://127.0.0.1:{servers.free_port()}"  # nothing listens there
    plan = LoadPlan(mode="before", scenario="browse", rate=5, duration_s=1)
    with pytest.raises(ConnectFailed, match="unreachable") as caught:
        loadtest.loadtest(
            settings,
            plan,
            results / "out",
            url=url,
            database_url=migrated_db_url,
            redis_url=redis_url,
        )
    assert caught.value.exit_code == 3
    assert list(results.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rate", "5", "--users", "3"], "cannot be combined"),
        (["--spawn-rate", "3", "--users", "3", "--rate", "1"], "cannot be combined"),
        ([], "no load given"),
        (["--spawn-rate", "2"], "--spawn-rate needs --users"),
        (["--rate", "5", "--scenario", "nope"], "unknown scenario 'nope'"),
        (["--rate", "0"], "--rate must be"),
        (["--rate", "5", "--duration", "0"], "--duration must be"),
        (["--rate", "5", "--repeat", "0"], "--repeat must be"),
        (["--rate", "5", "--mode", "sideways"], "sideways"),
    ],
)
def test_bad_options_exit_2_before_touching_anything(args, message, results):
    mode = [] if "--mode" in args else ["--mode", "before"]
    result = CliRunner().invoke(app, ["loadtest", *mode, "--out", str(results / "o"), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert list(results.iterdir()) == []


def test_a_folder_with_results_is_never_overwritten(results):
    (results / "out").mkdir()
    (results / "out" / "run-01").mkdir()
    result = CliRunner().invoke(
        app, ["loadtest", "--mode", "after", "--rate", "5", "--out", str(results / "out")]
    )
    assert result.exit_code == 2
    assert "already exists and is not empty" in result.output
    assert [p.name for p in (results / "out").iterdir()] == ["run-01"]


def test_without_a_database_the_cli_exits_3(results):
    result = CliRunner().invoke(
        app, ["loadtest", "--mode", "after", "--rate", "5", "--out", str(results / "o")]
    )
    assert result.exit_code == 3
    assert "no database" in result.output
    assert list(results.iterdir()) == []
