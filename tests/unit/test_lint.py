"""`opskit lint` rules, each shown to fire on a bad file and to pass the project's own files."""

import pytest

from opskit.engine.lint import lint
from opskit.engine.phase_files import MIGRATIONS_DIR

HEADER = "SET lock_timeout = '5s';\nSET statement_timeout = '10min';\n"
GOOD_PHASE1 = (
    HEADER
    + """
CREATE TABLE opskit_counts (user_id bigint PRIMARY KEY, n bigint NOT NULL);
CREATE FUNCTION opskit_count_votes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO opskit_counts SELECT user_id, count(*) FROM new_rows GROUP BY user_id
    ON CONFLICT (user_id) DO UPDATE SET n = opskit_counts.n + EXCLUDED.n;
    RETURN NULL;
END $$;
LOCK TABLE users, votes IN SHARE ROW EXCLUSIVE MODE;
CREATE TRIGGER trg_opskit_count_votes AFTER INSERT ON votes REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION opskit_count_votes();
CREATE CONSTRAINT TRIGGER trg_opskit_users_gone AFTER DELETE ON users
DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION opskit_count_votes();
"""
)
GOOD_BACKFILL = (
    HEADER + "INSERT INTO opskit_counts SELECT user_id, count(*) FROM votes GROUP BY 1;\n"
)
GOOD_PHASE2 = (
    HEADER
    + """
CREATE MATERIALIZED VIEW mv_feed_projects AS
SELECT p.id AS project_id, p.created_at, count(v.*) AS votes
FROM projects p LEFT JOIN votes v ON v.project_id = p.id GROUP BY p.id;
CREATE UNIQUE INDEX mv_feed_projects_pk ON mv_feed_projects (project_id);
CREATE INDEX mv_feed_projects_new_idx ON mv_feed_projects (created_at DESC);
"""
)
GOOD_PHASE4 = (
    "-- opskit: no-transaction\n"
    + HEADER
    + ("CREATE INDEX CONCURRENTLY IF NOT EXISTS votes_created_idx ON votes (created_at);\n")
)


DROP_TRIGGER = "DROP TRIGGER IF EXISTS trg_opskit_count_votes ON votes;\n"


@pytest.fixture
def write(tmp_path):
    directory = tmp_path / "migrations"
    directory.mkdir()
    files = {
        "phase1_denormalized_tables.sql": GOOD_PHASE1,
        "phase1_backfill_data.sql": GOOD_BACKFILL,
        "phase2_materialized_views.sql": GOOD_PHASE2,
        "phase4_critical_indexes.sql": GOOD_PHASE4,
    }
    for name, text in files.items():
        (directory / name).write_text(text)

    def with_file(name: str, text: str):
        (directory / name).write_text(text)
        return directory

    return with_file


def _rules(directory):
    return sorted({finding.rule for finding in lint(directory)})


def test_good_files_pass(write):
    assert lint(write("phase0_cleanup.sql", HEADER + "DROP TABLE IF EXISTS opskit_counts;\n")) == []


@pytest.mark.parametrize(
    ("name", "text", "rule"),
    [
        (
            "phase4_critical_indexes.sql",
            HEADER + "CREATE INDEX votes_x ON votes (created_at);\n",
            "blocking-index-on-app-table",
        ),
        (
            "phase4_critical_indexes.sql",
            HEADER + "CREATE INDEX CONCURRENTLY votes_x ON votes (created_at);\n",
            "concurrently-in-transaction",
        ),
        ("phase0_cleanup.sql", "SET lock_timeout = '5s';\nSELECT 1;\n", "missing-timeout"),
        (
            "phase3_search_and_forums.sql",
            HEADER
            + """
CREATE FUNCTION opskit_late() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN UPDATE opskit_counts SET n = n + 1; RETURN NULL; END $$;
CREATE TRIGGER trg_opskit_late AFTER INSERT ON votes FOR EACH STATEMENT EXECUTE FUNCTION opskit_late();
""",
            "trigger-after-backfill",
        ),
        (
            "phase3_search_and_forums.sql",
            HEADER
            + """
CREATE MATERIALIZED VIEW mv_chain_posts AS SELECT id AS post_id FROM chain_posts;
CREATE UNIQUE INDEX mv_chain_posts_pk ON mv_chain_posts (post_id) WHERE post_id > 0;
""",
            "matview-without-unique-index",
        ),
        (
            "phase3_search_and_forums.sql",
            HEADER
            + """
CREATE MATERIALIZED VIEW mv_chain_posts AS
SELECT id AS post_id, extract(epoch FROM now() - created_at) AS age FROM chain_posts;
CREATE UNIQUE INDEX mv_chain_posts_pk ON mv_chain_posts (post_id);
""",
            "time-in-matview",
        ),
        (
            "phase3_search_and_forums.sql",
            HEADER
            + """
CREATE TABLE opskit_runs (id bigint PRIMARY KEY, token uuid DEFAULT gen_random_uuid());
""",
            "volatile-default",
        ),
        ("phase0_cleanup.sql", HEADER + "TRUNCATE votes;\n", "touches-app-data"),
        (
            "phase1_denormalized_tables.down.sql",
            "DROP TABLE IF EXISTS opskit_counts, users;\n",
            "touches-app-data",
        ),
        # the locked section (docs/migrations.md)
        ("phase1_denormalized_tables.down.sql", DROP_TRIGGER, "strong-lock-not-up-front"),
        (
            "phase1_denormalized_tables.down.sql",
            "LOCK TABLE votes IN SHARE ROW EXCLUSIVE MODE;\n" + DROP_TRIGGER,
            "lock-upgrade",
        ),
        (
            "phase1_denormalized_tables.down.sql",
            "LOCK TABLE votes, users IN ACCESS EXCLUSIVE MODE;\n" + DROP_TRIGGER,
            "lock-order",
        ),
        (
            "phase1_denormalized_tables.down.sql",
            "LOCK TABLE users IN ACCESS EXCLUSIVE MODE;\nDROP TABLE IF EXISTS opskit_counts;\n"
            "LOCK TABLE votes IN ACCESS EXCLUSIVE MODE;\n" + DROP_TRIGGER,
            "locks-not-together",
        ),
        (
            "phase4_critical_indexes.down.sql",
            "-- opskit: no-transaction\nLOCK TABLE votes;\n" + DROP_TRIGGER,
            "lock-outside-transaction",
        ),
        (
            "phase0_cleanup.sql",
            HEADER + "LOCK TABLE votes IN SHARE MODE;\nDROP INDEX IF EXISTS votes_created_idx;\n",
            "lock-upgrade",
        ),
        (
            "phase3_search_and_forums.sql",
            HEADER + "CREATE TABLE opskit_x (user_id bigint REFERENCES users (id));\n",
            "strong-lock-not-up-front",
        ),
    ],
)
def test_each_rule_fires(write, name, text, rule):
    assert rule in _rules(write(name, text))


def test_a_statement_can_allow_a_rule_it_breaks_on_purpose(write):
    clock_view = """
CREATE MATERIALIZED VIEW mv_chain_posts AS
SELECT id AS post_id, now() AS scored_at FROM chain_posts;
CREATE UNIQUE INDEX mv_chain_posts_pk ON mv_chain_posts (post_id);
"""
    allowing = "-- opskit: allow time-in-matview (scored for the refresh's instant)"
    name = "phase3_search_and_forums.sql"
    assert _rules(write(name, HEADER + clock_view)) == ["time-in-matview"]
    assert _rules(write(name, HEADER + allowing + clock_view)) == []
    # the pragma allows that rule for that statement only
    other_rule = allowing + "\nCREATE MATERIALIZED VIEW mv_investors_directory AS SELECT 1 AS x;\n"
    assert _rules(write(name, HEADER + other_rule + clock_view)) == [
        "matview-without-unique-index",
        "time-in-matview",
    ]


def test_the_project_migration_files_pass_lint():
    assert lint(MIGRATIONS_DIR) == []


def test_a_no_transaction_statement_on_one_app_table_is_its_own_section(write):
    # It commits alone, holding nothing while it waits: no deadlock, the app waits lock_timeout.
    alone = "-- opskit: no-transaction\nSET lock_timeout = '500ms';\n" + DROP_TRIGGER
    assert "strong-lock-not-up-front" not in _rules(write("phase2_materialized_views.sql", alone))
    # Two app tables in one statement still hold one while waiting for the other.
    both = (
        "-- opskit: no-transaction\nSET lock_timeout = '500ms';\n"
        "ALTER TABLE votes ADD CONSTRAINT opskit_x FOREIGN KEY (user_id) REFERENCES users (id);\n"
    )
    assert "strong-lock-not-up-front" in _rules(write("phase2_materialized_views.sql", both))
