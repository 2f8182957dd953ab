"""The load generator's side of `opskit loadtest`: imported only inside Locust processes.

Locust monkey-patches the process with gevent when imported, so nothing in the parent process
(the CLI, tests) may import this module; `benchmarking.loadtest` starts Locust with the plan
OPSKIT_LOADTEST_PLAN and reads what this module writes.

Open model: every user of a process pulls the next send time from one shared schedule
(t0 + i / rate, interleaved across workers), sleeps until then and sends one request. A user
that is late because every user was busy sends at once but keeps the intended time, so the
coordinated-omission-corrected latency counts the time the request waited for a free user.
Closed model: users send back to back. Think model (`opskit capacity`): each user waits a think
time, uniform between the plan's bounds, after each answer; its next request's intended time is
the end of that wait, so the corrected latency also counts a busy generator's lag. Every
request's timing is recorded from Locust's `request` event at full resolution and written to
a Parquet file per process when it quits (in the think model also every `flush_s` seconds, so
`opskit capacity` can measure each step while the next one runs).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from itertools import count
from pathlib import Path

import gevent
import locust.runners
from locust import FastHttpUser, events
from locust.runners import MasterRunner, WorkerRunner

from opskit.benchmarking.requestlog import (
    STARTED_FILE,
    ArrivalSchedule,
    RequestRecorder,
    warm_up_writer,
)

PLAN = json.loads(Path(os.environ["OPSKIT_LOADTEST_PLAN"]).read_text())
if PLAN["model"] == "think":  # `opskit capacity`: parts written every second, a long ramp
    # Now, before the runner starts its heartbeats: pyarrow's first Parquet write takes seconds
    # on a busy machine, and must stall neither a heartbeat nor a step of the load.
    warm_up_writer()
    # The master counts a worker gone after this many missed 1 s heartbeats, and ends the test
    # when all are gone (Locust's default: 3). A worker stalled a few seconds by a busy 2-core
    # machine is not gone; the generator CPU, the lag and the flags show the stall instead.
    locust.runners.HEARTBEAT_LIVENESS = 30
FIXTURE: dict = PLAN["fixture"]

_recorder = RequestRecorder()
_schedule: ArrivalSchedule | None = None
_user_numbers = count()
_master_t0: float | None = None  # distributed runs: the master's start, sent to every worker
T0_MESSAGE = "opskit_t0"
IDLE_S = 3600.0  # after the load window a user idles until Locust ends the run


@events.init.add_listener
def _listen_for_t0(environment, **_kwargs) -> None:
    if isinstance(environment.runner, WorkerRunner):
        environment.runner.register_message(T0_MESSAGE, _receive_t0)


def _receive_t0(environment, msg, **_kwargs) -> None:
    global _master_t0
    _master_t0 = msg.data


@events.test_start.add_listener
def _start_schedule(environment, **_kwargs) -> None:
    global _schedule
    if not isinstance(environment.runner, WorkerRunner):
        if PLAN["model"] != "think":  # the think model's ramp ends the run itself
            # The run ends counted from its real start, not by --run-time, whose timer starts
            # before the test does (seconds before, on a busy machine).
            gevent.spawn_later(PLAN["run_s"], environment.runner.quit)
        (Path(PLAN["record_dir"]) / STARTED_FILE).write_text(repr(time.time()))
    if isinstance(environment.runner, MasterRunner):
        # Every worker counts its slots from this instant, so together they keep one schedule.
        # It reaches each worker before the spawn message that starts the worker's test.
        environment.runner.send_message(T0_MESSAGE, time.time())
        return
    worker_index = max(getattr(environment.runner, "worker_index", 0), 0)
    _recorder.start(worker_index, t0=_master_t0)
    if PLAN["model"] == "think":
        gevent.spawn(_flush_every, PLAN["flush_s"])
    if PLAN["model"] == "open":
        _schedule = ArrivalSchedule(
            t0=_recorder.t0,
            rate=PLAN["rate"],
            processes=max(PLAN["workers"], 1),
            process_index=worker_index,
            end_s=PLAN["load_s"],
        )


@events.request.add_listener
def _record(request_type, name, start_time, response_time, response, exception, context, **_kw):
    _recorder.record(
        endpoint=f"{request_type} {name}",
        intended_at=context.get("intended_at", math.nan),
        started_at=start_time,
        latency_ms=response_time,
        ok=exception is None,
        status=getattr(response, "status_code", 0) or 0,
    )


def _flush_every(interval_s: float) -> None:
    folder = Path(PLAN["record_dir"])
    while True:  # an empty part too: it tells `opskit capacity` this process is up to date
        gevent.sleep(interval_s)
        _recorder.write(folder)


@events.quitting.add_listener
def _write_records(environment, **_kwargs) -> None:
    if not isinstance(environment.runner, MasterRunner) and _recorder.t0 is not None:
        _recorder.write(Path(PLAN["record_dir"]))


class PacedUser(FastHttpUser):
    """A persona's base: paced by the open-model schedule, or back to back (closed model).

    Each task must send exactly one request: the intended send time belongs to that request.
    """

    abstract = True
    # Connection errors and 4xx/5xx are recorded as failed requests, never raised in the task.
    network_timeout = 30.0
    connection_timeout = 10.0

    def __init__(self, environment) -> None:
        super().__init__(environment)
        # Reproducible per user, and different in every worker process.
        self.rng = random.Random(f"{PLAN['seed']}:{_recorder.process_index}:{next(_user_numbers)}")
        self.intended_at = math.nan

    def context(self) -> dict:
        return {"intended_at": self.intended_at}

    def on_start(self) -> None:
        gevent.sleep(self.wait_time())

    def wait_time(self) -> float:
        if PLAN["model"] == "think":
            think_s = self.rng.uniform(*PLAN["think_s"])
            self.intended_at = time.time() + think_s
            return think_s
        if _schedule is None:  # closed model: the next request as soon as the answer arrived
            return 0.0 if time.time() < _recorder.t0 + PLAN["load_s"] else IDLE_S
        slot = _schedule.next_slot()
        if slot is None:
            self.intended_at = math.nan
            return IDLE_S
        self.intended_at = slot
        return max(0.0, slot - time.time())
