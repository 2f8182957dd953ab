"""`opskit capacity`'s step arithmetic: the plan, each step's figures and flags, the SLO stop."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from opskit.benchmarking.capacity import (
    CapacityPlan,
    StepResult,
    held_users,
    measure_step,
    parse_think,
)
from opskit.benchmarking.requestlog import REQUEST_SCHEMA
from opskit.core.errors import BadInput

PLAN = CapacityPlan(mode="after", users_max=300, step=100, step_s=30, think_min_s=1, think_max_s=5)


def _requests(latency_ms, *, start=1000.0, spacing_s=0.009, ok=None, lag_s=0.0) -> pa.Table:
    """Requests sent every `spacing_s` from `start`, each `lag_s` after its intended time."""
    n = len(latency_ms)
    ok = [True] * n if ok is None else ok
    started = start + np.arange(n) * spacing_s
    return pa.table(
        {
            "endpoint": ["GET /api/projects"] * n,
            "intended_at": started - lag_s,
            "started_at": started,
            "latency_ms": np.asarray(latency_ms, dtype=float),
            "ok": ok,
            "status": [200 if answered else 503 for answered in ok],
        },
        schema=REQUEST_SCHEMA,
    )


def _measure(requests, users=100, cpu=((1005.0, 40.0), (1006.0, 60.0)), workers=2):
    plan = CapacityPlan(**{**PLAN.__dict__, "workers": workers})
    return measure_step(
        users=users,
        started_at=990.0,
        window=(1000.0, 1010.0),
        requests=requests,
        cpu_samples=list(cpu),
        plan=plan,
    )


def test_think_bounds_parse_and_bad_ones_name_the_fix():
    assert parse_think("1-5") == (1.0, 5.0)
    assert parse_think("0.5-0.5") == (0.5, 0.5)
    for text in ("5-1", "1", "a-b", "-1-2", "1-nan", "1-99999"):
        with pytest.raises(BadInput, match="--think"):
            parse_think(text)


def test_steps_climb_by_step_and_end_at_users_max():
    assert PLAN.users_per_step() == [100, 200, 300]
    uneven = CapacityPlan(mode="before", users_max=250, step=100)
    assert uneven.users_per_step() == [100, 200, 250]
    assert PLAN.settle_s == 6.0  # the longest think time and a flush
    assert CapacityPlan(mode="after", step_s=4, think_max_s=5).settle_s == 2.0  # half the step


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"users_max": 0}, "--users-max"),
        ({"step": 0}, "--step"),
        ({"step": 600}, "--step"),
        ({"step_s": 1}, "--step-seconds"),
        ({"slo_p99_ms": 0}, "--slo-p99"),
        ({"think_min_s": 0, "think_max_s": 0}, "--think"),
        ({"workers": -1}, "--workers"),
        ({"mode": "sideways"}, "sideways"),
        ({"scenario": "nope"}, "unknown scenario"),
    ],
)
def test_bad_plans_are_refused(change, message):
    with pytest.raises(BadInput, match=message):
        CapacityPlan(**{**PLAN.__dict__, **change}).validate()


def test_a_step_that_holds_counts_only_requests_completed_in_its_window():
    latencies = [10.0] * 990 + [150.0] * 10  # p99 at the boundary between the two
    early = _requests([5.0] * 50, start=990.0)  # completed before the window: not this step
    step = _measure(pa.concat_tables([early, _requests(latencies)]))
    assert step.requests == 1000
    assert step.rps == 100.0  # 1000 requests in 10 s
    assert step.p50_ms == 10.0
    assert step.p99_ms == pytest.approx(np.percentile(latencies, 99), abs=0.01)
    assert step.errors == 0 and step.held
    # 100 users thinking 3 s on average with ~11 ms answers could send 33 req/s: 100 is plenty
    assert step.expected_rps == pytest.approx(100 / (3 + np.mean(latencies) / 1000), abs=0.1)
    assert step.generator_cpu == 25.0  # 50% of one core, over two worker processes
    assert not step.flagged and step.as_dict()["flagged"] is False


def test_one_error_or_a_slow_tail_breaks_the_slo():
    ok = [True] * 999 + [False]
    failed = _measure(_requests([10.0] * 1000, ok=ok))
    assert failed.errors == 1 and not failed.held
    assert failed.error_kinds == {"GET /api/projects 503": 1}
    assert failed.p99_ms == 10.0  # latencies of answered requests only

    slow = _measure(_requests([10.0] * 980 + [250.0] * 20))
    assert slow.p99_ms == 250.0 and not slow.held
    assert not _measure(_requests([])).held  # nothing answered: nothing held


def test_generator_lag_shows_in_the_corrected_p99_only():
    step = _measure(_requests([10.0] * 1000, lag_s=0.3))
    assert step.p99_ms == 10.0
    assert step.p99_corrected_ms == pytest.approx(310.0)
    assert step.held  # the SLO is on what the API answered


def test_a_busy_generator_or_a_rate_below_the_users_think_time_is_flagged():
    busy = _measure(_requests([10.0] * 1000), cpu=[(1005.0, 150.0), (1006.0, 150.0)])
    assert busy.generator_cpu == 75.0 and busy.flags == ["generator_cpu_high"]
    # 1000 users thinking 3 s could send ~330 req/s; they sent 100
    slow = _measure(_requests([10.0] * 1000), users=1000)
    assert slow.flags == ["rate_below_expected"] and slow.held and slow.flagged


def test_held_users_is_the_largest_unflagged_step_that_held():
    def step(users, held, flags=()):
        return StepResult(
            users=users, started_at=0, measured_from=0, measured_until=1, requests=1, rps=1,
            expected_rps=1, p50_ms=1, p99_ms=1, p99_corrected_ms=1, errors=0,
            generator_cpu=math.nan, flags=list(flags), held=held,
        )  # fmt: skip

    assert held_users([]) == 0
    assert held_users([step(100, True), step(200, True), step(300, False)]) == 200
    assert held_users([step(100, True), step(200, True, ["generator_cpu_high"])]) == 100
    assert held_users([step(100, False)]) == 0


def test_each_endpoint_has_its_p99_slowest_first():
    reads = _requests([5.0] * 900)
    writes = _requests([120.0] * 90 + [400.0] * 10, start=1000.003)
    writes = writes.set_column(0, "endpoint", pa.array(["POST /api/votes"] * 100))
    step = _measure(pa.concat_tables([reads, writes]))
    assert list(step.endpoints_p99) == ["POST /api/votes", "GET /api/projects"]
    assert step.endpoints_p99["GET /api/projects"] == [900, 5.0]
    assert step.endpoints_p99["POST /api/votes"][0] == 100
    assert step.endpoints_p99["POST /api/votes"][1] > 300
