"""Statistics for before/after load-test runs, after Go's benchstat.

The statistical unit is the run, not the request: requests inside one run share its warm caches,
its noisy neighbours and its garbage collections, so they are not independent samples. Each run
is boiled down to one value per endpoint and metric; runs are then compared with
distribution-free methods (median with an order-statistic interval, Mann-Whitney U, a bootstrap
over runs for the ratio), and the p-values are Holm-corrected across endpoints x metrics.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats


@dataclass(frozen=True)
class Metric:
    name: str
    label: str
    unit: str
    lower_is_better: bool


METRICS: dict[str, Metric] = {
    metric.name: metric
    for metric in (
        Metric("p50_ms", "p50", "ms", True),
        Metric("p95_ms", "p95", "ms", True),
        Metric("p99_ms", "p99", "ms", True),
        Metric("p99_co_ms", "p99 (CO-corrected)", "ms", True),
        Metric("mean_ms", "mean", "ms", True),
        Metric("throughput_rps", "throughput", "req/s", False),
        Metric("error_rate", "error rate", "", True),
    )
}

ALPHA = 0.05
MIN_RUNS_PER_SIDE = 4  # below this, Mann-Whitney U cannot reach p < 0.05 even for one test
BOOTSTRAP_RESAMPLES = 2000

RunValues = Mapping[str, Mapping[str, float]]  # endpoint -> metric name -> value, for one run


# ---------------------------------------------------------------------------- one run


def measured_requests(
    requests: pd.DataFrame, measured_from: float, measured_until: float
) -> pd.DataFrame:
    """The rows of requests.parquet sent after the warm-up and before the run's end.

    By `started_at`: requests still going out while the load generator shuts down are not
    part of the measured load.
    """
    started = requests["started_at"]
    return requests[(started >= measured_from) & (started < measured_until)]


def co_corrected_latency_ms(requests: pd.DataFrame) -> pd.Series:
    """Latency counted from when the open-model schedule wanted the request sent.

    A stalled server also delays the requests queued behind the stall; counting from the
    actual send time would hide that delay (coordinated omission). NaN in the closed model.
    """
    return (requests["started_at"] - requests["intended_at"]) * 1000.0 + requests["latency_ms"]


def run_metrics(
    requests: pd.DataFrame, *, measured_from: float, measured_until: float
) -> dict[str, dict[str, float]]:
    """Per endpoint: p50, p95, p99, CO-corrected p99, mean, throughput and error rate of one run.

    `requests` holds every row of the run (warm-up included); only rows started in
    [measured_from, measured_until) count. Latency metrics use successful requests only (a refused
    connection answers fast and would flatter the percentiles); the error rate counts all
    measured requests; throughput is successful requests per second of the measured window.
    Percentiles are exact, computed on the full-resolution latencies.
    """
    window_s = measured_until - measured_from
    measured = measured_requests(requests, measured_from, measured_until)
    result: dict[str, dict[str, float]] = {}
    for endpoint, rows in measured.groupby("endpoint", sort=True):
        ok = rows[rows["ok"].astype(bool)]
        latency = ok["latency_ms"].to_numpy(dtype=float)
        co_latency = co_corrected_latency_ms(ok).to_numpy(dtype=float)
        co_latency = co_latency[~np.isnan(co_latency)]
        if len(latency):
            p50, p95, p99 = np.percentile(latency, [50, 95, 99])
            mean = float(latency.mean())
        else:
            p50 = p95 = p99 = mean = math.nan
        result[str(endpoint)] = {
            "p50_ms": float(p50),
            "p95_ms": float(p95),
            "p99_ms": float(p99),
            "p99_co_ms": float(np.percentile(co_latency, 99)) if len(co_latency) else math.nan,
            "mean_ms": mean,
            "throughput_rps": len(ok) / window_s if window_s > 0 else math.nan,
            "error_rate": 1.0 - len(ok) / len(rows),
        }
    return result


# ---------------------------------------------------------------------------- across runs


@dataclass(frozen=True)
class MedianCI:
    """The median of per-run values and a distribution-free interval around it.

    `confidence` is the interval's exact coverage; below 6 runs no pair of order statistics
    reaches 95%, and the interval is then the full range with its (lower) coverage.
    """

    median: float
    low: float
    high: float
    confidence: float
    runs: int


def median_ci(values: Sequence[float], confidence: float = 0.95) -> MedianCI | None:
    """Median with the order-statistic confidence interval (binomial, no distribution assumed).

    [x(k), x(n-k+1)] covers the true median with probability 1 - 2 P(B <= k-1), B ~ Bin(n, 1/2);
    the narrowest such interval that reaches `confidence` is chosen.
    """
    x = np.sort(_finite(values))
    n = len(x)
    if n == 0:
        return None

    def coverage(k: int) -> float:
        return 1.0 - 2.0 * float(scipy_stats.binom.cdf(k - 1, n, 0.5))

    reaching = [k for k in range(1, n // 2 + 1) if coverage(k) >= confidence]
    k = max(reaching) if reaching else 1
    return MedianCI(
        median=float(np.median(x)),
        low=float(x[k - 1]),
        high=float(x[n - k]),
        confidence=max(coverage(k), 0.0),
        runs=n,
    )


def bootstrap_ratio_ci(
    before: Sequence[float],
    after: Sequence[float],
    *,
    confidence: float = 0.95,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile-bootstrap interval of median(after) / median(before), resampling runs.

    Each side is resampled with replacement on its own (the runs are the units). NaN when a
    side has no value or its resampled medians can be zero.
    """
    b, a = _finite(before), _finite(after)
    if not len(b) or not len(a):
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    before_medians = np.median(rng.choice(b, size=(resamples, len(b))), axis=1)
    after_medians = np.median(rng.choice(a, size=(resamples, len(a))), axis=1)
    if np.any(before_medians == 0):
        return math.nan, math.nan
    ratios = after_medians / before_medians
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(ratios, [tail, 100.0 - tail])
    return float(low), float(high)


def mann_whitney_p(before: Sequence[float], after: Sequence[float]) -> float:
    """Two-sided Mann-Whitney U p-value on per-run values (exact for small samples).

    With ties scipy's default falls back to a normal approximation, poor for a handful of
    runs; the permutation distribution is exact up to ~10 runs per side. NaN when a side has
    fewer than two runs (an endpoint missing from some runs): no test is possible then.
    """
    b, a = _finite(before), _finite(after)
    if len(b) < 2 or len(a) < 2:
        return math.nan
    pooled = np.concatenate([b, a])
    if np.all(pooled == pooled[0]):
        return 1.0
    if len(np.unique(pooled)) == len(pooled):
        method: str | scipy_stats.PermutationMethod = "auto"
    else:
        method = scipy_stats.PermutationMethod(rng=np.random.default_rng(0))
    return float(scipy_stats.mannwhitneyu(a, b, alternative="two-sided", method=method).pvalue)


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (reject where adjusted p <= alpha), NaN kept as NaN.

    Controls the chance of any false "significant" across the whole family, without
    assuming the tests are independent.
    """
    indexed = [(p, i) for i, p in enumerate(p_values) if not math.isnan(p)]
    indexed.sort()
    m = len(indexed)
    adjusted = [math.nan] * len(p_values)
    running_max = 0.0
    for rank, (p, i) in enumerate(indexed):
        running_max = max(running_max, min(1.0, (m - rank) * p))
        adjusted[i] = running_max
    return adjusted


def smallest_possible_p(runs_before: int, runs_after: int) -> float:
    """The smallest two-sided Mann-Whitney p-value these run counts can give (no ties)."""
    if runs_before == 0 or runs_after == 0:
        return 1.0
    return min(1.0, 2.0 / math.comb(runs_before + runs_after, runs_before))


def runs_needed(tests: int, alpha: float = ALPHA) -> int:
    """Runs per side for which Holm over `tests` comparisons can call the first one significant."""
    runs = MIN_RUNS_PER_SIDE
    while smallest_possible_p(runs, runs) > alpha / max(tests, 1):
        runs += 1
    return runs


@dataclass(frozen=True)
class MetricComparison:
    endpoint: str
    metric: str
    before: MedianCI | None
    after: MedianCI | None
    ratio: float  # median(after) / median(before)
    ratio_low: float
    ratio_high: float
    p_value: float
    p_adjusted: float  # Holm, across every tested endpoint x metric
    significant: bool

    @property
    def improved(self) -> bool:
        """A significant change in the good direction (lower latency, higher throughput)."""
        if not (self.significant and self.before and self.after):
            return False
        went_down = self.after.median < self.before.median
        return went_down == METRICS[self.metric].lower_is_better


@dataclass(frozen=True)
class Comparison:
    runs_before: int
    runs_after: int
    comparisons: list[MetricComparison]
    tests: int  # the size of the Holm family
    warnings: list[str]

    def get(self, endpoint: str, metric: str) -> MetricComparison | None:
        for comparison in self.comparisons:
            if comparison.endpoint == endpoint and comparison.metric == metric:
                return comparison
        return None


def compare(
    before_runs: Sequence[RunValues], after_runs: Sequence[RunValues], *, alpha: float = ALPHA
) -> Comparison:
    """Compare two sets of runs per endpoint and metric; Holm across everything tested.

    An endpoint seen on one side only gets its medians but no test. A comparison whose runs
    all hold the same value on both sides (say, 0 errors everywhere) gets p = 1 and is left out
    of the Holm family: it cannot be significant at any level, so counting it would only cost
    the real tests power (Tarone's argument for discrete tests).
    """
    endpoints = sorted({e for run in [*before_runs, *after_runs] for e in run})
    rows: list[dict] = []
    for endpoint in endpoints:
        seen = {metric for run in [*before_runs, *after_runs] for metric in run.get(endpoint, {})}
        for metric in (m for m in METRICS if m in seen):
            before = [run[endpoint].get(metric, math.nan) for run in before_runs if endpoint in run]
            after = [run[endpoint].get(metric, math.nan) for run in after_runs if endpoint in run]
            b_ci, a_ci = median_ci(before), median_ci(after)
            p_value = mann_whitney_p(before, after)
            pooled = _finite([*before, *after])
            testable = bool(b_ci and a_ci) and len(np.unique(pooled)) > 1
            ratio = a_ci.median / b_ci.median if b_ci and a_ci and b_ci.median else math.nan
            low, high = bootstrap_ratio_ci(before, after)
            rows.append(
                {
                    "endpoint": endpoint,
                    "metric": metric,
                    "before": b_ci,
                    "after": a_ci,
                    "ratio": ratio,
                    "ratio_low": low,
                    "ratio_high": high,
                    "p_value": p_value,
                    "family_p": p_value if testable else math.nan,
                }
            )
    adjusted = holm_adjust([row.pop("family_p") for row in rows])
    comparisons = [
        MetricComparison(**row, p_adjusted=p_adj, significant=p_adj <= alpha)
        for row, p_adj in zip(rows, adjusted, strict=True)
    ]
    tests = sum(not math.isnan(p) for p in adjusted)
    return Comparison(
        runs_before=len(before_runs),
        runs_after=len(after_runs),
        comparisons=comparisons,
        tests=tests,
        warnings=_power_warnings(len(before_runs), len(after_runs), tests, alpha),
    )


def _power_warnings(runs_before: int, runs_after: int, tests: int, alpha: float) -> list[str]:
    warnings = []
    if min(runs_before, runs_after) < MIN_RUNS_PER_SIDE:
        warnings.append(
            f"only {runs_before} run(s) before and {runs_after} after: with fewer than "
            f"{MIN_RUNS_PER_SIDE} runs per side no change can be called significant; "
            f"use --repeat {runs_needed(tests, alpha)} or more"
        )
    elif tests and smallest_possible_p(runs_before, runs_after) > alpha / tests:
        warnings.append(
            f"with {runs_before} runs before and {runs_after} after the smallest possible "
            f"p-value is {smallest_possible_p(runs_before, runs_after):.4f}, but Holm over "
            f"{tests} comparisons needs {alpha / tests:.5f}: no change can be called "
            f"significant; use --repeat {runs_needed(tests, alpha)} or more"
        )
    return warnings


def _finite(values: Sequence[float]) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    return array[np.isfinite(array)]
