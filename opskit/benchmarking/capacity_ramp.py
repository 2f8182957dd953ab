"""The ramp of `opskit capacity`: a Locust load shape, run as a second locustfile beside the
scenario (imported only inside Locust processes, like `opskit.benchmarking.locust_user`).

Step k holds the plan's steps[k] users for at least step_s seconds, counted from when this
shape set that count (logged to the steps file, which `opskit capacity` reads to place each
step's window); the ramp ends after the last step, or at the next tick (within a second) once
`opskit capacity` has created the stop file.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from locust import LoadTestShape

from opskit.benchmarking.locust_user import PLAN
from opskit.benchmarking.requestlog import STEPS_FILE, STOP_FILE


class CapacityRamp(LoadTestShape):
    def __init__(self) -> None:
        super().__init__()
        self.records = Path(PLAN["record_dir"])
        self.index = -1
        self.step_started_at = 0.0

    def tick(self) -> tuple[int, float] | None:
        if (self.records / STOP_FILE).exists():
            return None
        now = time.time()
        if self.index < 0 or now >= self.step_started_at + PLAN["step_s"]:
            if self.index + 1 == len(PLAN["steps"]):
                return None
            self.index += 1
            self.step_started_at = now
            users = PLAN["steps"][self.index]
            with (self.records / STEPS_FILE).open("a") as log:
                log.write(json.dumps({"users": users, "at": now}) + "\n")
        return PLAN["steps"][self.index], PLAN["spawn_rate"]
