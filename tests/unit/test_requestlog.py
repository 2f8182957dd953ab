"""The open model's schedule, the per-process request log and the per-second table."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from opskit.benchmarking.loadtest import FLAGS, LoadPlan, misspell, per_second, summarize
from opskit.benchmarking.requestlog import (
    REQUEST_SCHEMA,
    ArrivalSchedule,
    RequestRecorder,
    read_process_logs,
)


def _slots(schedule: ArrivalSchedule) -> list[float]:
    slots = []
    while (slot := schedule.next_slot()) is not None:
        slots.append(slot)
    return slots


def test_one_process_keeps_the_rate_until_the_end():
    slots = _slots(ArrivalSchedule(t0=100.0, rate=4, processes=1, process_index=0, end_s=2.0))
    assert slots == [100.0, 100.25, 100.5, 100.75, 101.0, 101.25, 101.5, 101.75]


def test_workers_take_turns_and_together_keep_the_schedule():
    schedules = [
        ArrivalSchedule(t0=0.0, rate=10, processes=3, process_index=k, end_s=3.0) for k in range(3)
    ]
    per_worker = [_slots(s) for s in schedules]
    assert per_worker[1][:2] == [0.1, pytest.approx(0.4)]
    merged = sorted(slot for slots in per_worker for slot in slots)
    np.testing.assert_allclose(merged, np.arange(30) / 10)


def test_the_recorder_writes_what_the_collector_reads(tmp_path):
    first, second = RequestRecorder(), RequestRecorder()
    first.start(0, t0=50.0)
    second.start(1, t0=49.5)
    first.record(endpoint="GET /a", intended_at=50.0, started_at=50.2, latency_ms=1.25,
                 ok=True, status=200)  # fmt: skip
    second.record(endpoint="POST /b", intended_at=math.nan, started_at=50.1, latency_ms=0.5,
                  ok=False, status=0)  # fmt: skip
    first.write(tmp_path)
    second.write(tmp_path)

    table, t0 = read_process_logs(tmp_path)
    assert t0 == 49.5  # the earliest process start
    assert table.schema == REQUEST_SCHEMA
    assert table["endpoint"].to_pylist() == ["POST /b", "GET /a"]  # by start time
    assert table["latency_ms"].to_pylist() == [0.5, 1.25]
    assert table["status"].to_pylist() == [0, 200]


def test_no_process_log_means_no_start():
    table, t0 = read_process_logs(Path("/nonexistent-opskit-dir"))
    assert t0 is None and table.num_rows == 0


def _requests(rows: list[tuple]) -> pa.Table:
    columns = list(zip(*rows, strict=True))
    return pa.table({name: list(col) for name, col in zip(REQUEST_SCHEMA.names, columns, strict=True)},
                    schema=REQUEST_SCHEMA)  # fmt: skip


def test_seconds_count_completions_errors_and_cpu():
    plan = LoadPlan(mode="before", scenario="browse", rate=2, duration_s=2, warmup_s=1)
    requests = _requests([
        ("GET /a", 0.0, 0.0, 100.0, True, 200),   # completes in second 0
        ("GET /a", 0.5, 0.6, 500.0, True, 200),   # completes at 1.1: second 1
        ("GET /a", 1.0, 1.9, 50.0, False, 500),   # completes at 1.95: second 1, an error
        ("GET /a", 2.5, 2.5, 10.0, True, 200),    # second 2
    ])  # fmt: skip
    cpu = [(1.0, 10.0), (2.0, 20.0), (3.0, 30.0)]
    seconds = per_second(requests, 0.0, plan, cpu).to_pydict()
    assert seconds["second"] == [0, 1, 2]
    assert seconds["achieved_rate"] == [1.0, 2.0, 1.0]
    assert seconds["errors"] == [0, 1, 0]
    assert seconds["target_rate"] == [2.0, 2.0, 2.0]
    assert seconds["generator_cpu_pct"] == [10.0, 20.0, 30.0]


def test_summary_flags_a_missed_rate_and_a_busy_generator_and_corrects_latency():
    plan = LoadPlan(mode="after", scenario="browse", rate=10, duration_s=2, warmup_s=1)
    # Two measured requests: the second waited 300 ms for a free user before it was sent.
    requests = _requests([
        ("GET /a", 0.1, 0.1, 5.0, True, 200),   # warm-up
        ("GET /a", 1.2, 1.2, 5.0, True, 200),
        ("GET /a", 1.3, 1.6, 5.0, True, 200),
    ])  # fmt: skip
    cpu = [(float(s), 90.0) for s in range(1, 4)]
    seconds = per_second(requests, 0.0, plan, cpu)
    summary, meta = summarize(requests, seconds, 0.0, plan, Path("r"), 1)
    assert summary.flags == ["generator_cpu_high", "rate_below_target"]
    assert meta["flags"] == summary.flags and meta["model"] == "open"
    assert summary.achieved_rate == 1.0  # 2 completions in the 2 measured seconds
    assert summary.p50_ms == 5.0
    assert summary.p99_corrected_ms == pytest.approx(302.0, abs=3)
    assert meta["started_at"] == 0.0 and meta["finished_at"] == 3.0


@pytest.mark.parametrize("word", ["market", "vision", "ai", "oracle", "defi"])
def test_a_misspelling_is_one_slip_away(word):
    typo = misspell(word, random.Random(word))
    assert typo != word or len(set(word)) == 1
    assert abs(len(typo) - len(word)) <= 1


def test_the_open_model_pool_is_split_evenly_over_workers():
    plan = LoadPlan(mode="before", scenario="browse", rate=25, duration_s=1, workers=4)
    assert plan.locust_users == 28 and plan.locust_users % 4 == 0
    assert LoadPlan(mode="before", scenario="browse", rate=1, duration_s=1).locust_users == 10


def test_every_flag_a_run_can_get_is_explained():
    plan = LoadPlan(mode="after", scenario="browse", rate=10, duration_s=1)
    requests = _requests([("GET /a", 0.0, 0.0, 5.0, True, 200)])
    seconds = per_second(requests, 0.0, plan, [(1.0, 500.0)])
    summary, _ = summarize(requests, seconds, 0.0, plan, Path("r"), 1)
    assert summary.flags and set(summary.flags) <= set(FLAGS)
