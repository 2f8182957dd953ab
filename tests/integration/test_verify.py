"""`opskit verify` object checks on real PostgreSQL, with small phase files written per test."""

import psycopg
import pytest

from opskit.engine import migrations
from opskit.engine.verify import verify

HEADER = "SET lock_timeout = '5s';\nSET statement_timeout = '1min';\n"
PHASE1 = (
    HEADER
    + """
CREATE TABLE opskit_vote_totals (project_id bigint PRIMARY KEY, total bigint NOT NULL);
CREATE FUNCTION opskit_noop() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
CREATE TRIGGER trg_opskit_noop AFTER INSERT ON votes FOR EACH STATEMENT EXECUTE FUNCTION opskit_noop();
"""
)
PHASE2 = (
    HEADER
    + """
CREATE MATERIALIZED VIEW mv_feed_projects AS SELECT id AS project_id, title FROM projects;
CREATE UNIQUE INDEX mv_feed_projects_pk ON mv_feed_projects (project_id);
"""
)
PHASE4 = (
    "-- opskit: no-transaction\n"
    + HEADER
    + ("CREATE INDEX CONCURRENTLY IF NOT EXISTS votes_created_idx ON votes (created_at);\n")
)


@pytest.fixture
def migrated(tiny_db_url, tmp_path):
    directory = tmp_path / "migrations"
    directory.mkdir()
    for name, text in {
        "phase1_denormalized_tables.sql": PHASE1,
        "phase2_materialized_views.sql": PHASE2,
        "phase4_critical_indexes.sql": PHASE4,
    }.items():
        (directory / name).write_text(text)
    migrations.migrate(tiny_db_url, directory=directory)
    return tiny_db_url, directory


def _failures(url, directory):
    with psycopg.connect(url, autocommit=True) as conn:
        report = verify(conn, directory)
    return report, {check.name: check.detail for check in report.checks if not check.ok}


def test_a_healthy_database_passes(migrated):
    report, failures = _failures(*migrated)
    assert failures == {}
    names = {check.name for check in report.checks}
    assert {
        "table opskit_vote_totals",
        "trigger trg_opskit_noop",
        "function opskit_noop",
        "materialized view mv_feed_projects",
        "index votes_created_idx",
    } <= names


@pytest.mark.parametrize(
    ("damage", "failed_check", "detail"),
    [
        ("DROP TABLE opskit_vote_totals", "table opskit_vote_totals", "missing"),
        (
            "ALTER TABLE votes DISABLE TRIGGER trg_opskit_noop",
            "trigger trg_opskit_noop",
            "DISABLED",
        ),
        (
            "UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'votes_created_idx'::regclass",
            "index votes_created_idx",
            "INVALID",
        ),
        (
            "REFRESH MATERIALIZED VIEW mv_feed_projects WITH NO DATA",
            "materialized view mv_feed_projects",
            "not populated",
        ),
        (
            "DROP INDEX mv_feed_projects_pk",
            "materialized view mv_feed_projects",
            "no plain unique index",
        ),
    ],
)
def test_each_kind_of_damage_is_reported(migrated, damage, failed_check, detail):
    url, directory = migrated
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(damage)
    report, failures = _failures(url, directory)
    assert not report.ok
    assert detail in failures[failed_check]


def test_no_phase_applied_is_a_failure(tiny_db_url, tmp_path):
    report, failures = _failures(tiny_db_url, tmp_path)
    assert not report.ok and failures == {"phases applied": "none"}
