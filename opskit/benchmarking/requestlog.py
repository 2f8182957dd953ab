"""Every request of a load test at full resolution, and the open model's arrival schedule.

Used on both sides of `opskit loadtest`: inside each Locust process (which must stay light, so
no pandas or database driver here) to schedule and record requests, and in the collector to read
the per-process files back. Columns are those of `requests.parquet` (docs/benchmarking.md, "Load
tests").
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REQUEST_SCHEMA = pa.schema(
    [
        ("endpoint", pa.string()),
        ("intended_at", pa.float64()),
        ("started_at", pa.float64()),
        ("latency_ms", pa.float64()),
        ("ok", pa.bool_()),
        ("status", pa.int32()),
    ]
)
T0_KEY = b"opskit_t0"  # Parquet metadata: when this process's schedule (and run) started
# Parquet metadata: when the part was written; every request completed before is in this part
# or an earlier one of its process.
WRITTEN_KEY = b"opskit_written_at"
STARTED_FILE = "started"  # written by the head Locust process when the test starts: progress
# `opskit capacity`'s ramp: the steps' start times, appended as they start, and the file whose
# existence ends the ramp.
STEPS_FILE = "steps.jsonl"
STOP_FILE = "stop"


class ArrivalSchedule:
    """Send times t0 + i / rate for one process of `processes`, interleaved with the others.

    Process k of n takes the slots i = k, k + n, k + 2n, ... of the overall schedule, so n
    workers together keep the target rate and each keeps 1/n of it.
    """

    def __init__(
        self, *, t0: float, rate: float, processes: int, process_index: int, end_s: float
    ) -> None:
        self.t0 = t0
        self.rate = rate
        self.step = processes
        self.end_s = end_s
        self._next_slot = process_index

    def next_slot(self) -> float | None:
        """The next unclaimed send time (epoch s), or None once the schedule is over."""
        offset = self._next_slot / self.rate
        if offset >= self.end_s:
            return None
        self._next_slot += self.step
        return self.t0 + offset


class RequestRecorder:
    """Columns of one process's requests, kept in memory and written at the end (or in parts,
    each write taking the requests recorded since the previous one)."""

    def __init__(self) -> None:
        self.t0: float | None = None
        self.process_index = 0
        self._columns: dict[str, list] = {name: [] for name in REQUEST_SCHEMA.names}
        self._parts = 0

    def start(self, process_index: int, t0: float | None = None) -> None:
        self.t0 = time.time() if t0 is None else t0
        self.process_index = process_index

    def record(
        self,
        *,
        endpoint: str,
        intended_at: float,
        started_at: float,
        latency_ms: float,
        ok: bool,
        status: int,
    ) -> None:
        columns = self._columns
        columns["endpoint"].append(endpoint)
        columns["intended_at"].append(intended_at)
        columns["started_at"].append(started_at)
        columns["latency_ms"].append(latency_ms)
        columns["ok"].append(ok)
        columns["status"].append(status)

    def __len__(self) -> int:
        return len(self._columns["endpoint"])

    def write(self, folder: Path) -> Path:
        """Write the requests recorded since the last write to
        requests-<process>-<pid>-<part>.parquet in `folder`, with t0 in its metadata.

        Written under a temporary name and renamed, so a reader never sees half a file.
        """
        table = pa.table(self._columns, schema=REQUEST_SCHEMA).replace_schema_metadata(
            {T0_KEY: repr(self.t0).encode(), WRITTEN_KEY: repr(time.time()).encode()}
        )
        self._columns = {name: [] for name in REQUEST_SCHEMA.names}
        name = f"requests-{self.process_index:03d}-{os.getpid()}-{self._parts:05d}.parquet"
        self._parts += 1
        pq.write_table(table, folder / f".{name}")
        return (folder / f".{name}").rename(folder / name)


def warm_up_writer() -> None:
    """Write an empty part to memory: pyarrow's first Parquet write initialises it (seconds on
    a busy machine), better done before a Locust process starts its load."""
    pq.write_table(REQUEST_SCHEMA.empty_table(), io.BytesIO())


def read_process_logs(folder: Path) -> tuple[pa.Table, float | None]:
    """All processes' requests in `folder` as one table sorted by start, and the earliest t0."""
    tables, starts = [], []
    for path in sorted(folder.glob("requests-*.parquet")):
        table = pq.read_table(path)
        tables.append(table.replace_schema_metadata(None))
        t0 = (table.schema.metadata or {}).get(T0_KEY)
        if t0 is not None:
            starts.append(float(t0))
    if not tables:
        return REQUEST_SCHEMA.empty_table(), None
    merged = pa.concat_tables(tables).sort_by("started_at")
    return merged, min(starts) if starts else None
