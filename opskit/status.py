"""`opskit status`: phases applied or pending, and the counts an operator checks first."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import psycopg
from psycopg import sql

from opskit.migrations import PhaseStatus, phase_statuses
from opskit.sql import queries
from opskit.truth import DENORMALIZED

# Relations whose row counts status reports when they exist (CONTRACT §6, §7).
MATERIALIZED_VIEWS = (
    "mv_feed_projects",
    "mv_leaderboard_projects",
    "mv_leaderboard_builders",
    "mv_chains_discovery",
    "mv_project_details",
    "mv_search_index",
    "mv_chain_posts",
    "mv_investors_directory",
)


@dataclass
class StatusReport:
    phases: list[PhaseStatus]
    opskit_triggers: int
    row_counts: dict[str, int | None] = field(default_factory=dict)
    refresh_queue_pending: int | None = None
    refresh_runs_last_hour: dict[str, int] | None = None

    def as_dict(self) -> dict:
        return {
            "phases": [asdict(phase) for phase in self.phases],
            "opskit_triggers": self.opskit_triggers,
            "row_counts": self.row_counts,
            "refresh_queue_pending": self.refresh_queue_pending,
            "refresh_runs_last_hour": self.refresh_runs_last_hour,
        }


def _exists(conn: psycopg.Connection, name: str) -> bool:
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()[0]


def status_report(conn: psycopg.Connection) -> StatusReport:
    status_sql = queries("status.sql")
    report = StatusReport(
        phases=phase_statuses(conn),
        opskit_triggers=conn.execute(status_sql["opskit_trigger_count"]).fetchone()[0],
    )
    for name in (*(spec.relation for spec in DENORMALIZED), *MATERIALIZED_VIEWS):
        report.row_counts[name] = (
            conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(name))
            ).fetchone()[0]
            if _exists(conn, name)
            else None
        )
    if _exists(conn, "mv_refresh_queue"):
        report.refresh_queue_pending = conn.execute(status_sql["refresh_queue_pending"]).fetchone()[
            0
        ]
    if _exists(conn, "mv_refresh_log"):
        report.refresh_runs_last_hour = dict(
            conn.execute(status_sql["refresh_runs_last_hour"]).fetchall()
        )
    return report
