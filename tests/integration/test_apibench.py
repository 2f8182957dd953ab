"""`opskit bench-api` smoke test: real servers, tiny data, few requests; structure only."""

from opskit import apibench
from opskit.settings import Settings


def test_bench_api_measures_every_endpoint_in_both_modes(
    migrated_db_url, redis_url, redis_prefix, tmp_path
):
    settings = Settings.from_env(
        {"OPSKIT_HOME": str(tmp_path / "home"), "OPSKIT_REDIS_PREFIX": redis_prefix}
    )
    result = apibench.bench_api(
        settings,
        migrated_db_url,
        redis_url,
        requests=10,
        concurrency=2,
        pool_size=2,
        log_dir=tmp_path / "logs",
    )
    names = [row["endpoint"] for row in result.endpoints]
    assert names[0] == apibench.FLOOR
    assert set(apibench.TARGET_SPEEDUPS) <= set(names)
    for mode in ("before", "after"):
        for name in names:
            summary = result.modes[mode][name]
            assert summary["requests"] == 10 and summary["errors"] == 0, (mode, name)
            assert 0 < summary["p50_ms"] <= summary["p99_ms"]
            assert summary["client_p50_ms"] >= summary["p50_ms"] * 0.5
    floor = next(row for row in result.endpoints if row["endpoint"] == apibench.FLOOR)
    assert floor["after_p50_vs_floor"] == 1.0
    vote = next(row for row in result.endpoints if row["endpoint"] == "vote")
    assert vote["target_speedup"] == 80.0 and vote["speedup_p50"] > 0
