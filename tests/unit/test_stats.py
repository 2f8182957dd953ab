"""opskit.benchmarking.stats: per-run metrics, intervals, tests and the A/A check, on generated data."""

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from opskit.benchmarking import stats
from tests.unit.result_folders import write_result_folder

T0 = 1_000_000.0


def _requests(rows):
    """rows: (endpoint, started_at offset s, latency ms, ok, schedule lag ms or None)."""
    return pd.DataFrame(
        {
            "endpoint": [r[0] for r in rows],
            "intended_at": [math.nan if r[4] is None else T0 + r[1] - r[4] / 1000 for r in rows],
            "started_at": [T0 + r[1] for r in rows],
            "latency_ms": [float(r[2]) for r in rows],
            "ok": [r[3] for r in rows],
            "status": np.array([200 if r[3] else 0 for r in rows], dtype="int32"),
        }
    )


def test_run_metrics_match_hand_computed_values():
    rows = [("GET /a", 1.0, 1000.0, True, 10.0)]  # in the warm-up: dropped
    rows += [("GET /a", 5.0 + i, ms, True, 10.0) for i, ms in enumerate([1, 2, 3, 4, 100])]
    rows += [("GET /a", 9.5, 0.1, False, 10.0)]  # a fast failure: counted as an error only
    rows += [("GET /b", 6.0, 7.0, True, None)]
    metrics = stats.run_metrics(_requests(rows), measured_from=T0 + 5.0, measured_until=T0 + 15.0)

    a = metrics["GET /a"]
    assert a["p50_ms"] == pytest.approx(3.0)
    assert a["p95_ms"] == pytest.approx(4 + 0.8 * 96)  # linear between the 4th and 5th value
    assert a["p99_ms"] == pytest.approx(4 + 0.96 * 96)
    assert a["p99_co_ms"] == pytest.approx(10 + 4 + 0.96 * 96)  # 10 ms behind schedule
    assert a["mean_ms"] == pytest.approx(22.0)
    assert a["throughput_rps"] == pytest.approx(5 / 10)
    assert a["error_rate"] == pytest.approx(1 / 6)
    b = metrics["GET /b"]
    assert b["p50_ms"] == pytest.approx(7.0)
    assert math.isnan(b["p99_co_ms"])  # closed model: no schedule, no correction
    assert b["error_rate"] == 0.0


def test_an_endpoint_whose_requests_all_failed_has_nan_latencies_and_full_error_rate():
    rows = [("GET /a", 6.0, 3.0, False, 0.0), ("GET /a", 7.0, 3.0, False, 0.0)]
    metrics = stats.run_metrics(_requests(rows), measured_from=T0, measured_until=T0 + 10)
    assert math.isnan(metrics["GET /a"]["p50_ms"])
    assert metrics["GET /a"]["error_rate"] == 1.0
    assert metrics["GET /a"]["throughput_rps"] == 0.0


def test_median_ci_is_the_order_statistic_interval():
    ten = stats.median_ci([10, 1, 9, 2, 8, 3, 7, 4, 6, 5])
    assert ten.median == 5.5
    # k = 2: 1 - 2 P(Bin(10, 1/2) <= 1) = 1 - 22/1024; k = 3 would cover only 89%
    assert (ten.low, ten.high) == (2.0, 9.0)
    assert ten.confidence == pytest.approx(1 - 22 / 1024)

    five = stats.median_ci([3, 1, 2, 5, 4])
    assert (five.median, five.low, five.high) == (3.0, 1.0, 5.0)  # the full range ...
    assert five.confidence == pytest.approx(1 - 2 / 32)  # ... covers only 93.75%

    one = stats.median_ci([4.0, math.nan])
    assert (one.median, one.low, one.high, one.runs) == (4.0, 4.0, 4.0, 1)
    assert stats.median_ci([math.nan]) is None


def test_holm_adjusts_step_down_and_keeps_nan():
    adjusted = stats.holm_adjust([0.01, 0.04, math.nan, 0.03, 0.005])
    expected = [0.03, 0.06, math.nan, 0.06, 0.02]
    for got, want in zip(adjusted, expected, strict=True):
        assert got == pytest.approx(want, nan_ok=True)


def test_mann_whitney_is_exact_for_small_samples_and_handles_ties():
    assert stats.mann_whitney_p([1, 2, 3, 4, 5], [6, 7, 8, 9, 10]) == pytest.approx(2 / 252)
    assert stats.mann_whitney_p([1, 2, 2, 4, 5], [6, 7, 8, 9, 9]) == pytest.approx(2 / 252)
    assert stats.mann_whitney_p([0, 0, 0], [0, 0, 0]) == 1.0
    assert math.isnan(stats.mann_whitney_p([], [1.0]))
    # An endpoint seen in one run of a side only, with ties: no test, not a scipy error.
    assert math.isnan(stats.mann_whitney_p([3.0], [3.0, 3.0, 4.0]))
    assert stats.smallest_possible_p(5, 5) == pytest.approx(2 / 252)
    assert stats.smallest_possible_p(3, 3) > 0.05


def test_bootstrap_interval_covers_the_true_ratio_in_most_experiments():
    rng = np.random.default_rng(7)
    true_ratio, covered, experiments = 0.5, 0, 200
    for seed in range(experiments):
        before = 10.0 * rng.lognormal(0.0, 0.1, 8)
        after = 10.0 * true_ratio * rng.lognormal(0.0, 0.1, 8)
        low, high = stats.bootstrap_ratio_ci(before, after, seed=seed)
        assert low <= high
        covered += low <= true_ratio <= high
    # a percentile bootstrap of medians over 8 runs under-covers a little; 95% nominal
    assert covered / experiments >= 0.85


def test_bootstrap_interval_of_a_side_without_values_is_nan():
    assert all(math.isnan(v) for v in stats.bootstrap_ratio_ci([], [1.0, 2.0]))


def _runs(tmp_path, name, **kwargs):
    folder = write_result_folder(tmp_path / name, **kwargs)
    runs = []
    for run in sorted(folder.glob("run-*")):
        meta = pd.read_json(run / "meta.json", typ="series")
        runs.append(
            stats.run_metrics(
                pd.read_parquet(run / "requests.parquet"),
                measured_from=meta["started_at"] + meta["warmup_s"],
                measured_until=meta["finished_at"],
            )
        )
    return runs


def test_a_a_comparison_finds_no_change(tmp_path):
    """Two sets of 5 runs of the same mode: every endpoint and metric comes out "~"."""
    first = _runs(tmp_path, "first", seed=11)
    second = _runs(tmp_path, "second", seed=12)
    comparison = stats.compare(first, second)
    assert comparison.tests > 0
    assert [c for c in comparison.comparisons if c.significant] == []


def test_a_a_over_many_repetitions_stays_within_the_family_wise_error_rate():
    """Holm keeps the chance of any false "significant" per comparison at or below alpha."""
    rng = np.random.default_rng(3)
    endpoints = [f"GET /e{i}" for i in range(4)]

    def runs(k):
        return [
            {e: {"p50_ms": float(rng.lognormal(2.0, 0.2))} for e in endpoints} for _ in range(k)
        ]

    false_alarms = sum(
        any(c.significant for c in stats.compare(runs(8), runs(8)).comparisons) for _ in range(100)
    )
    assert false_alarms <= 10  # alpha = 0.05 family-wise; 10 leaves room for sampling noise


def test_a_real_2x_difference_is_significant_with_5_runs(tmp_path):
    endpoint = {"GET /api/projects?sort=trending": 20.0}
    before = _runs(tmp_path, "before", endpoints=endpoint, seed=21)
    after = _runs(tmp_path, "after", endpoints=endpoint, seed=22, speed=2.0)
    comparison = stats.compare(before, after)
    p50 = comparison.get("GET /api/projects?sort=trending", "p50_ms")
    assert p50.significant and p50.improved
    assert p50.ratio == pytest.approx(0.5, rel=0.15)
    assert p50.ratio_low <= 0.5 <= p50.ratio_high
    # the same rate both sides and no errors: nothing to test there, so not in the family
    assert not comparison.get("GET /api/projects?sort=trending", "throughput_rps").significant
    assert comparison.tests == 5
    assert comparison.warnings == []


def test_too_few_runs_for_the_family_is_warned_about_and_more_runs_fix_it():
    rng = np.random.default_rng(5)
    endpoints = [f"GET /e{i}" for i in range(12)]

    def runs(k, scale):
        return [
            {e: {"p50_ms": scale * float(rng.lognormal(2.0, 0.05))} for e in endpoints}
            for _ in range(k)
        ]

    five = stats.compare(runs(5, 1.0), runs(5, 0.5))
    assert not any(c.significant for c in five.comparisons)
    # 12 tests need p <= 0.05 / 12 = 0.0042; 5 vs 5 runs give at best 2/252 = 0.0079
    assert "use --repeat 6 or more" in five.warnings[0]

    six = stats.compare(runs(6, 1.0), runs(6, 0.5))  # at best 2/924 = 0.0022
    assert six.warnings == []
    assert all(c.significant and c.improved for c in six.comparisons)

    three = stats.compare(runs(3, 1.0), runs(3, 0.5))
    assert "fewer than 4 runs per side" in three.warnings[0]


def test_an_endpoint_on_one_side_only_is_described_but_not_tested():
    before = [{"GET /old": {"p50_ms": 5.0}}] * 4
    after = [{"GET /new": {"p50_ms": 1.0}}] * 4
    comparison = stats.compare(before, after)
    old = comparison.get("GET /old", "p50_ms")
    assert old.before.median == 5.0 and old.after is None
    assert math.isnan(old.p_adjusted) and not old.significant
    assert comparison.tests == 0


def test_errors_appearing_from_zero_are_significant_and_not_an_improvement():
    before = [{"POST /api/votes": {"error_rate": 0.0}}] * 5
    after = [{"POST /api/votes": {"error_rate": r}} for r in (0.05, 0.04, 0.06, 0.05, 0.055)]
    errors = stats.compare(before, after).get("POST /api/votes", "error_rate")
    assert errors.significant and not errors.improved
    assert math.isnan(errors.ratio)  # no ratio from zero, but the change is still judged


@given(st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=1, max_size=30))
def test_holm_adjusted_p_values_are_valid_and_keep_the_order(p_values):
    adjusted = stats.holm_adjust(p_values)
    for raw, adj in zip(p_values, adjusted, strict=True):
        assert raw <= adj + 1e-12 and adj <= 1.0
        assert adj <= min(1.0, raw * len(p_values)) + 1e-12  # never worse than Bonferroni
    pairs = sorted(zip(p_values, adjusted, strict=True))
    assert all(a[1] <= b[1] + 1e-12 for a, b in itertools.pairwise(pairs))
