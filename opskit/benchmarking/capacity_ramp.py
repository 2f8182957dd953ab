"""The ramp of `opskit capacity`: a Locust load shape, run as a second locustfile beside the
scenario (imported only inside Locust processes, like `opskit.benchmarking.locust_user`).

Step k holds the plan's steps[k] users for at least step_s seconds, counted from when this
shape set that count (logged to the steps file, which `opskit capacity` reads to place each
step's window); the ramp ends at the next tick (within a second) once `opskit capacity` has
created the stop file, or LAST_STEP_GRACE_S after the last step's end. The last step is held
that long so that every process writes its requests past the step's end before Locust stops
(ending the ramp right at the end raced the processes' last writes on a busy machine, and
`opskit capacity` failed after a ramp that held every step).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from locust import LoadTestShape

from opskit.benchmarking.locust_user import PLAN
from opskit.benchmarking.requestlog import STEPS_FILE, STOP_FILE

LAST_STEP_GRACE_S = 60.0  # `opskit capacity` stops Locust long before, once it has read


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
                if now < self.step_started_at + PLAN["step_s"] + LAST_STEP_GRACE_S:
                    return PLAN["steps"][self.index], PLAN["spawn_rate"]
                return None
            self.index += 1
            self.step_started_at = now
            users = PLAN["steps"][self.index]
            with (self.records / STEPS_FILE).open("a") as log:
                log.write(json.dumps({"users": users, "at": now}) + "\n")
        return PLAN["steps"][self.index], PLAN["spawn_rate"]
