"""bench-api --repeat: each figure is the median over rounds of that round's figure."""

from opskit.benchmarking import api_latency


def _round(floor_ms: float, stats_ms: float, before_ms: float) -> dict:
    def summary(p50: float) -> dict:
        return {
            "requests": 10,
            "errors": 0,
            "p50_ms": p50,
            "p99_ms": 2 * p50,
            "client_p50_ms": 2 * p50,
            "client_p99_ms": 4 * p50,
        }

    return {
        "before": {"floor": summary(floor_ms), "stats": summary(before_ms)},
        "before_indexes": {"floor": summary(floor_ms), "stats": summary(before_ms)},
        "after": {"floor": summary(floor_ms), "stats": summary(stats_ms)},
    }


def test_ratios_are_taken_per_round_then_the_median_with_its_range():
    rounds = [_round(0.1, 0.19, 5.0), _round(0.2, 0.6, 5.0), _round(0.1, 0.25, 5.0)]
    (floor, stats) = api_latency._median_rows([api_latency._compare(columns) for columns in rounds])
    assert floor["after_p50_vs_floor"] == 1.0
    # per round 1.9x, 3.0x, 2.5x: the median ratio, not the ratio of median latencies (0.25/0.1)
    assert stats["after_p50_vs_floor"] == 2.5
    assert stats["after_p50_vs_floor_range"] == [1.9, 3.0]
    assert stats["after_p50_ms"] == 0.25
    assert stats["speedup_p50"] == 20.0  # 5/0.25; per round 26.32, 8.33, 20
    assert stats["speedup_target_met"] is False  # 20x < 24x
    assert stats["floor_target_met"] is False  # p50 2.5x > 2x
    assert stats["requests"] == {column: 30 for column in api_latency.COLUMNS}


def test_one_round_gives_that_round():
    columns = _round(0.1, 0.15, 5.0)
    (single,) = [row for row in api_latency._compare(columns) if row["endpoint"] == "stats"]
    (median,) = [
        row
        for row in api_latency._median_rows([api_latency._compare(columns)])
        if row["endpoint"] == "stats"
    ]
    assert {key: median[key] for key in single} == single
    assert median["floor_target_met"] is True  # 1.5x and 1.5x
    modes = api_latency._median_modes([columns])
    assert modes == columns
