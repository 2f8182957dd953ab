"""`opskit status`: phases applied or pending, and the counts an operator checks first."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime

import psycopg
from psycopg import sql

from opskit.engine.daemon import HEARTBEAT_S, LIVE_AFTER_HEARTBEATS
from opskit.engine.fold import FOLD_FUNCTIONS
from opskit.engine.migrations import PhaseStatus, phase_statuses
from opskit.engine.refresh import MAINTAINED
from opskit.engine.truth import DENORMALIZED
from opskit.sql import queries


@dataclass
class StatusReport:
    phases: list[PhaseStatus]
    opskit_triggers: int
    row_counts: dict[str, int | None] = field(default_factory=dict)
    refresh_queue_pending: int | None = None  # changes no view has applied yet
    # view -> {"pending_changes", "oldest_pending_at"}: views with changes still to apply
    pending_by_view: dict[str, dict] | None = None
    # the instant of after mode's stored trending scores, and how old they are
    trending_scored_at: datetime | None = None
    trending_age_s: float | None = None
    # delta rows the daemon has not folded yet, per table: they grow while no daemon runs
    pending_deltas: dict[str, int] | None = None
    refresh_runs_last_hour: dict[str, int] | None = None
    # view -> {"batches", "p50_s", "p95_s", "max_s"}: oldest change to the end of the batch
    # that made it visible
    refresh_staleness_last_hour: dict[str, dict] | None = None
    live_daemons: list[dict] | None = None  # daemons with a recent heartbeat
    latest_job_runs: list[dict] | None = None  # the newest slot of each scheduled job
    granted_to: list[dict] | None = None  # roles of `migrate --grant-to`: {"role", "role_exists"}
    # touched keys waiting for the next `reconcile --changed` (phase 1's opskit_reconcile_keys)
    touched_keys_pending: int | None = None
    # the `reconcile --changed` runs: the newest, and the last hour's share of consistent rows
    reconcile_changed: dict | None = None

    def as_dict(self) -> dict:
        return {
            "phases": [asdict(phase) for phase in self.phases],
            "opskit_triggers": self.opskit_triggers,
            "row_counts": self.row_counts,
            "refresh_queue_pending": self.refresh_queue_pending,
            "pending_by_view": self.pending_by_view,
            "trending_scored_at": self.trending_scored_at,
            "trending_age_s": self.trending_age_s,
            "pending_deltas": self.pending_deltas,
            "refresh_runs_last_hour": self.refresh_runs_last_hour,
            "refresh_staleness_last_hour": self.refresh_staleness_last_hour,
            "live_daemons": self.live_daemons,
            "latest_job_runs": self.latest_job_runs,
            "granted_to": self.granted_to,
            "touched_keys_pending": self.touched_keys_pending,
            "reconcile_changed": self.reconcile_changed,
        }


def status_report(conn: psycopg.Connection) -> StatusReport:
    status_sql = queries("status.sql")
    report = StatusReport(
        phases=phase_statuses(conn),
        opskit_triggers=conn.execute(status_sql["opskit_trigger_count"]).fetchone()[0],
    )
    # The views are tables now: these counts are what the write-up's pg_matviews query gave.
    for name in (*(spec.relation for spec in DENORMALIZED), *MAINTAINED):
        report.row_counts[name] = _count(conn, name) if _exists(conn, name) else None
    if _exists(conn, "mv_refresh_queue"):
        report.refresh_queue_pending = conn.execute(status_sql["refresh_queue_pending"]).fetchone()[
            0
        ]
        report.pending_by_view = {
            row["view_name"]: {k: v for k, v in row.items() if k != "view_name"}
            for row in _rows(conn, status_sql["pending_by_view"])
        }
        report.refresh_staleness_last_hour = {
            view: {
                "batches": batches,
                "p50_s": float(p50),
                "p95_s": float(p95),
                "max_s": float(top),
            }
            for view, batches, p50, p95, top in conn.execute(
                status_sql["refresh_staleness_last_hour"]
            )
        }
    if _exists(conn, "mv_feed_projects"):
        scored = conn.execute(status_sql["trending_scored_at"]).fetchone()
        if scored is not None:
            report.trending_scored_at, report.trending_age_s = scored
    delta_tables = [table for tables in FOLD_FUNCTIONS.values() for table in tables]
    if all(_exists(conn, table) for table in delta_tables):
        report.pending_deltas = {table: _count(conn, table) for table in delta_tables}
    if _exists(conn, "mv_refresh_log"):
        report.refresh_runs_last_hour = dict(
            conn.execute(status_sql["refresh_runs_last_hour"]).fetchall()
        )
    if _exists(conn, "opskit_daemon_heartbeats"):
        live_after_s = HEARTBEAT_S * LIVE_AFTER_HEARTBEATS
        report.live_daemons = _rows(
            conn, status_sql["live_daemons"], {"live_after_s": live_after_s}
        )
        report.latest_job_runs = _rows(conn, status_sql["latest_job_runs"])
    if _exists(conn, "opskit_reconcile_keys"):
        report.touched_keys_pending = _count(conn, "opskit_reconcile_keys")
        if _exists(conn, "mv_applied_keys"):  # view keys not yet collected (may repeat a key)
            report.touched_keys_pending += _count(conn, "mv_applied_keys")
    changed_sql = queries("reconcile_changed.sql")
    if conn.execute(changed_sql["runs_have_mode"]).fetchone()[0]:
        report.reconcile_changed = _rows(conn, changed_sql["changed_last_hour"])[0]
    if _exists(conn, "opskit_migration_grants"):
        report.granted_to = _rows(conn, queries("migrations.sql")["grantees"])
    return report


def _exists(conn: psycopg.Connection, name: str) -> bool:
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()[0]


def _count(conn: psycopg.Connection, name: str) -> int:
    """Rows of relation `name` (a whitelisted name: opskit's own relations)."""
    query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(name))
    return conn.execute(query).fetchone()[0]


def _rows(conn: psycopg.Connection, query: str, params: dict | None = None) -> list[dict]:
    cursor = conn.execute(query, params)
    names = [column.name for column in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor]
