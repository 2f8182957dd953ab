"""`opskit bench-api` smoke test: real servers, tiny data, few requests; structure only."""

import pytest

from opskit.benchmarking import api_latency, clones
from opskit.core.db import connect
from opskit.core.errors import ProblemFound
from opskit.core.settings import Settings
from opskit.engine.phase_files import PHASES


def _applied_phases(url: str) -> list[str]:
    with connect(url, autocommit=True) as conn:
        if conn.execute("SELECT to_regclass('opskit_migrations') IS NULL").fetchone()[0]:
            return []
        return [row[0] for row in conn.execute("SELECT name FROM opskit_migrations")]


def test_bench_api_measures_every_endpoint_on_clones_before_and_after(
    tiny_db_url, redis_url, redis_prefix, tmp_path
):
    settings = Settings.from_env(
        {"OPSKIT_HOME": str(tmp_path / "home"), "OPSKIT_REDIS_PREFIX": redis_prefix}
    )
    try:
        result = api_latency.bench_api(
            settings,
            tiny_db_url,
            redis_url,
            requests=10,
            concurrency=2,
            pool_size=2,
            keep_databases=True,
            repeat=2,
            log_dir=tmp_path / "logs",
        )
        # The source is only cloned; before runs on a clone without phases, after on one with all.
        assert _applied_phases(tiny_db_url) == []
        assert _applied_phases(result.databases["before"]) == []
        assert sorted(_applied_phases(result.databases["after"])) == sorted(PHASES)
    finally:
        source = clones.database_name(tiny_db_url)
        clones.drop_databases(
            tiny_db_url,
            [
                clones.database_url(tiny_db_url, f"{source}_{role}")
                for role in api_latency.CLONE_ROLES
            ],
        )
    assert [step["step"] for step in result.setup][1:] == [
        "migrate the after clone",
        "refresh the after clone's views",
        "vacuum and analyze both clones",
    ]
    names = [row["endpoint"] for row in result.endpoints]
    assert names[0] == api_latency.FLOOR
    assert set(api_latency.TARGET_SPEEDUPS) <= set(names)
    assert set(result.modes) == set(api_latency.COLUMNS)
    for column in api_latency.COLUMNS:
        for name in names:
            summary = result.modes[column][name]
            assert summary["requests"] == 20 and summary["errors"] == 0, (column, name)
            assert 0 < summary["p50_ms"] <= summary["p99_ms"]
            assert summary["client_p50_ms"] >= summary["p50_ms"] * 0.5
    assert result.repeat == 2
    floor = next(row for row in result.endpoints if row["endpoint"] == api_latency.FLOOR)
    assert floor["after_p50_vs_floor"] == 1.0
    assert floor["after_p50_vs_floor_range"] == [1.0, 1.0]
    for row in result.endpoints:
        low, high = row["after_p99_vs_floor_range"]
        assert low <= row["after_p99_vs_floor"] <= high, row
        assert row["floor_target_met"] == (
            row["after_p50_vs_floor"] <= 2.0 and row["after_p99_vs_floor"] <= 3.0
        )
    recall = result.search_recall  # after mode's first pages for every typo of the set
    assert recall["typos"] > 0 and recall["found"] + len(recall["misses"]) == recall["typos"]
    assert recall["recall"] == round(recall["found"] / recall["typos"], 4)
    # Every write endpoint is measured; answering the same intro requests in every column and
    # round succeeds only because each column's clone gets them back pending first.
    for name in ("message", "message_read", "intro", "intro_respond"):
        row = next(row for row in result.endpoints if row["endpoint"] == name)
        assert row["target_speedup"] == round(1 / 1.3, 3) and row["errors"] == 0, row
    vote = next(row for row in result.endpoints if row["endpoint"] == "vote")
    assert vote["target_speedup"] == 80.0 and vote["speedup_p50"] > 0
    assert vote["requests"] == {column: 20 for column in api_latency.COLUMNS}


def test_bench_api_from_a_migrated_source_rolls_the_before_clone_back(
    migrated_db_url, redis_url, redis_prefix, tmp_path
):
    settings = Settings.from_env(
        {"OPSKIT_HOME": str(tmp_path / "home"), "OPSKIT_REDIS_PREFIX": redis_prefix}
    )
    urls, setup = api_latency.prepare_clones(settings, migrated_db_url)
    try:
        assert _applied_phases(urls["before"]) == []
        assert sorted(_applied_phases(urls["after"])) == sorted(PHASES)
        assert "roll the before clone back to base" in [step["step"] for step in setup]
    finally:
        clones.drop_databases(migrated_db_url, list(urls.values()))


def test_bench_api_refuses_an_unseeded_database(base_db_url, redis_url, tmp_path):
    settings = Settings.from_env({"OPSKIT_HOME": str(tmp_path / "home")})
    with pytest.raises(ProblemFound, match="no seeded app data"):
        api_latency.bench_api(settings, base_db_url, redis_url, log_dir=tmp_path / "logs")
