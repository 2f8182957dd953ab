"""Seeding speed targets of the foundation issue (run with `make bench`, never in `make test`).

Targets on the 2-core reference machine against the embedded server: `medium` in at most 60 s,
`large` in at most 10 minutes.
"""

import pytest

from opskit.benchmarking import seed

TARGET_SECONDS = {"medium": 60, "large": 600}


@pytest.mark.bench
@pytest.mark.parametrize("scale", ["medium", "large"])
def test_seed_speed(fresh_database, scale):
    result = seed.seed_database(fresh_database(), scale, 1)
    for load in result.loads:
        print(
            f"{load.table:20} {load.rows:>12,} rows {load.seconds:8.2f} s {load.rows_per_s:>12,.0f}/s"
        )
    print(f"{scale}: {result.total_seconds:.1f} s in all")
    assert result.total_seconds <= TARGET_SECONDS[scale]
