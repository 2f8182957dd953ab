"""The daemon's APScheduler wiring (`opskit scheduler`, `python scheduler.py`).

Only wiring: every job is a method of opskit.engine.daemon.Daemon, where the logic (and what makes
several daemons safe at once) lives.
"""

from __future__ import annotations

import datetime as dt

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from opskit.engine import daemon, fold


def build_scheduler(worker: daemon.Daemon) -> BackgroundScheduler:
    """Every job of the daemon on a UTC BackgroundScheduler; each runs once at start."""
    scheduler = BackgroundScheduler(
        timezone=dt.UTC,
        job_defaults={"coalesce": True, "max_instances": 1},
    )
    now = dt.datetime.now(dt.UTC)
    scheduler.add_job(
        worker.heartbeat,
        IntervalTrigger(seconds=daemon.HEARTBEAT_S),
        id="heartbeat",
        next_run_time=now,
    )
    scheduler.add_job(
        worker.maintain_views,
        IntervalTrigger(seconds=worker.settings.refresh_poll_s),
        id="maintain_views",
        next_run_time=now,
    )
    scheduler.add_job(
        worker.fold_deltas,
        IntervalTrigger(seconds=fold.FOLD_INTERVAL_S),
        id="fold_deltas",
        next_run_time=now,
    )
    scheduler.add_job(
        worker.reconcile_changed,
        IntervalTrigger(seconds=worker.settings.reconcile_changed_s),
        id="reconcile_changed",
    )
    # Running it at start catches up a slot missed while no daemon ran (within the grace).
    scheduler.add_job(
        worker.reconcile_latest_slot,
        CronTrigger.from_crontab(worker.settings.reconcile_cron, timezone=dt.UTC),
        id="reconcile",
        next_run_time=now,
        misfire_grace_time=daemon.RECONCILE_MISFIRE_GRACE_S,
    )
    return scheduler
