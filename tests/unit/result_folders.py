"""Build `opskit loadtest` result folders (meta.json + Parquet, the exact format) from a model.

Latencies are lognormal per endpoint; each run gets its own multiplicative offset, as real runs
do (a different process, cache state, neighbour noise), so the run-to-run spread is realistic.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

START = 1_780_000_000.0
ENDPOINTS = {
    "GET /api/projects?sort=trending": 20.0,
    "GET /api/users/stats": 8.0,
    "POST /api/votes": 4.0,
}


def write_result_folder(
    folder: Path,
    *,
    mode: str = "before",
    runs: int = 5,
    endpoints: dict[str, float] | None = None,
    speed: float = 1.0,
    rate: float = 60.0,
    duration_s: float = 20.0,
    warmup_s: float = 5.0,
    scenario: str = "mixed",
    model: str = "open",
    seed: int = 0,
    error_rate: float = 0.0,
    flags: dict[int, list[str]] | None = None,
    failing_run: int | None = None,
) -> Path:
    """Write run-01 .. run-K under `folder`; latencies are the endpoint medians / `speed`.

    `failing_run` (1-based) gets no successful request; `flags` maps run numbers to flags.
    """
    rng = np.random.default_rng(seed)
    endpoints = endpoints or ENDPOINTS
    names = list(endpoints)
    for index in range(1, runs + 1):
        started = START + index * 1000.0
        count = int(rate * duration_s)
        intended = started + np.arange(count) / rate
        lag_s = rng.exponential(0.0002, count)
        endpoint = np.array([names[i % len(names)] for i in range(count)])
        medians = np.array([endpoints[name] for name in endpoint]) / speed
        run_offset = rng.lognormal(0.0, 0.05)
        latency = medians * run_offset * rng.lognormal(0.0, 0.35, count)
        ok = rng.random(count) >= error_rate
        if index == failing_run:
            ok[:] = False
        requests = pd.DataFrame(
            {
                "endpoint": endpoint,
                "intended_at": intended if model == "open" else np.full(count, np.nan),
                "started_at": intended + lag_s,
                "latency_ms": latency,
                "ok": ok,
                "status": np.where(ok, 200, 500).astype("int32"),
            }
        )
        second = ((requests["started_at"] - started) // 1).astype("int64")
        per_second = requests.groupby(second)
        seconds = pd.DataFrame(
            {
                "second": np.arange(int(duration_s), dtype="int64"),
                "target_rate": rate if model == "open" else np.nan,
            }
        )
        seconds["achieved_rate"] = per_second.size().reindex(seconds["second"], fill_value=0).values
        seconds["achieved_rate"] = seconds["achieved_rate"].astype(float)
        seconds["errors"] = (
            (~requests["ok"]).groupby(second).sum().reindex(seconds["second"], fill_value=0).values
        ).astype("int64")
        seconds["generator_cpu_pct"] = rng.uniform(15, 30, len(seconds))
        run_folder = folder / f"run-{index:02d}"
        run_folder.mkdir(parents=True)
        requests.to_parquet(run_folder / "requests.parquet")
        seconds.to_parquet(run_folder / "seconds.parquet")
        meta = {
            "format": 1,
            "mode": mode,
            "scenario": scenario,
            "model": model,
            "target_rate": rate if model == "open" else None,
            "users": None if model == "open" else 10,
            "duration_s": duration_s,
            "warmup_s": warmup_s,
            "started_at": started,
            "finished_at": started + duration_s,
            "repeat_index": index,
            "scale": "tiny",
            "row_counts": {"users": 200, "projects": 60, "votes": 2000},
            "postgres": {"version": "18.0", "settings": {"shared_buffers": "2GB", "jit": "off"}},
            "redis": {"version": "9.0.0"},
            "cpu": {"model": "Test CPU", "cores": 2},
            "opskit_version": "0.1.0",
            "git_commit": None,
            "target_url": "http://127.0.0.1:8765",
            "flags": (flags or {}).get(index, []),
            "requests_total": count,
            "errors_total": int((~ok).sum()),
        }
        (run_folder / "meta.json").write_text(json.dumps(meta))
    return folder
