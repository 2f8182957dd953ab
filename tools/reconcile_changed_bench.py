"""Time `opskit reconcile --changed` after N distinct users each cast one vote (docs/measurements.md,
"Reconcile --changed").

    OPSKIT_DATABASE_URL=... OPSKIT_REDIS_URL=... python tools/reconcile_changed_bench.py 1000,10000 SEED

On a seeded, migrated database (no daemon running): folds and applies what is pending, checks
once to start from no touched keys, then per N: N votes (the app's upsert: a new up vote, or a
flip) by N distinct random users on random live projects, the daemon's fold and view batches,
and one timed `reconcile --changed`. Prints one JSON line per N. It writes votes: use a scratch
database.
"""

import json
import os
import random
import sys

import psycopg

from opskit.core.settings import Settings
from opskit.engine import changed, refresh

VOTE = (
    "INSERT INTO votes (user_id, project_id, vote_type) VALUES (%s, %s, 'up') "
    "ON CONFLICT (user_id, project_id) DO UPDATE SET vote_type = "
    "CASE WHEN votes.vote_type = 'up' THEN 'down' ELSE 'up' END"
)
FOLD = "SELECT opskit_fold_user_dashboard_deltas(1000000), opskit_fold_intro_request_deltas(1000000)"


def main() -> None:
    settings = Settings.from_env()
    url, redis_url = settings.database_url, settings.redis_url
    sizes = [int(n) for n in sys.argv[1].split(",")]
    rng = random.Random(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
    with psycopg.connect(url, autocommit=True) as conn:

        def settle() -> None:
            conn.execute(FOLD)
            while refresh.refresh(url, settings):
                pass

        users = [row[0] for row in conn.execute("SELECT id FROM users")]
        projects = [row[0] for row in conn.execute("SELECT id FROM projects WHERE deleted_at IS NULL")]
        settle()
        changed.reconcile_changed(settings, url, redis_url)
        for n in sizes:
            with conn.pipeline():
                for user in rng.sample(users, n):
                    conn.execute(VOTE, (user, rng.choice(projects)))
            settle()
            load = os.getloadavg()[0]
            report = changed.reconcile_changed(settings, url, redis_url)
            print(json.dumps({
                "voters": n,
                "keys_checked": report.keys_checked,
                "seconds": report.seconds,
                "ms_per_1000_keys": round(report.seconds / max(report.keys_checked, 1) * 1e6, 1),
                "relations_seconds": report.relations_seconds,
                "checks": {c.name: [c.rows_checked, c.seconds] for c in report.checks},
                "drift_total": report.drift_total,
                "load1": round(load, 1),
            }), flush=True)


if __name__ == "__main__":
    main()
