"""Live-migration targets (run with `make bench`, never in `make test`).

On `small` and `medium` data, under 8 writers on every write path plus one slow multi-table
transaction: migrate, rollback --to base and migrate again with no app deadlock or error, no
drift, the app's write latency max in every phase at most the phase's lock_timeout + 1 s, and
the migration's own time at most 2x its time on the idle database (the runs alternate, idle
first, on clones of one seeded template).
"""

import psycopg
import pytest

from opskit.benchmarking import live_migration, seed

LOCK_TIMEOUT_MS = 500  # the project's phase files: SET lock_timeout = '500ms'
LATENCY_MARGIN_MS = 1000
SLOWDOWN = 2.0


@pytest.mark.bench
@pytest.mark.parametrize("scale", ["small", "medium"])
def test_live_migration_targets(fresh_database, scale):
    template = fresh_database()
    seed.seed_database(template, scale, 1)
    template_name = psycopg.conninfo.conninfo_to_dict(template)["dbname"]
    idle = live_migration.run(fresh_database(template_name), writers=0, slow_writers=0)
    loaded = live_migration.run(fresh_database(template_name), writers=8, slow_writers=1)
    for step_idle, step in zip(idle.steps, loaded.steps, strict=True):
        print(f"{scale} {step.step}: {step_idle.seconds:.1f} s idle, {step.seconds:.1f} s loaded")
        for window in step.windows:
            print(
                f"    {window.phase:<34} {window.seconds:>6.1f} s {window.operations:>6} ops"
                f"  p99 {window.p99_ms} ms"
                f"  max {window.max_ms} ms ({window.slowest})"
            )
    print(f"commits {loaded.app_commits}, deadlocks {loaded.deadlocks}, errors {loaded.errors}")
    assert [step.error for step in idle.steps + loaded.steps] == [None] * 6
    assert loaded.app_failures == 0, loaded.deadlock_details + loaded.errors
    assert loaded.drift == [] and idle.drift == []
    worst = max(w.max_ms or 0 for step in loaded.steps for w in step.windows)
    assert worst <= LOCK_TIMEOUT_MS + LATENCY_MARGIN_MS
    for step_idle, step in zip(idle.steps, loaded.steps, strict=True):
        assert step.seconds <= SLOWDOWN * step_idle.seconds, step.step
