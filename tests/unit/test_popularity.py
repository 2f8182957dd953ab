import numpy as np
import pytest

from opskit.benchmarking.seed import SCALES, popularity_counts


@pytest.mark.parametrize(
    ("n", "total", "exponent", "cap"),
    [
        (60, 2_000, 0.7, 160),
        (2_000, 100_000, 0.7, 4_000),
        (5_000, 25_000, 0.9, 4_999),
        (6, 400, 1.1, 200),
        (625, 2_000, 0.8, None),
    ],
)
def test_counts_add_up_respect_the_cap_and_fall_with_rank(n, total, exponent, cap):
    counts = popularity_counts(n, total, exponent, cap)
    assert len(counts) == n
    assert counts.sum() == total
    if cap is not None:
        assert counts.max() <= cap
    assert np.all(np.diff(counts) <= 1)  # never rises by more than a rounding step


def test_a_few_parents_get_most_children():
    counts = popularity_counts(20_000, 2_000_000, 0.7, 80_000)
    top_tenth = np.sort(counts)[::-1][: len(counts) // 10].sum()
    assert top_tenth / counts.sum() > 0.3


def test_an_impossible_total_is_capped():
    counts = popularity_counts(3, 100, 1.0, cap=10)
    assert counts.tolist() == [10, 10, 10]


def test_scales_grow():
    sizes = [SCALES[name].votes for name in ("tiny", "small", "medium", "large")]
    assert sizes == sorted(sizes)
