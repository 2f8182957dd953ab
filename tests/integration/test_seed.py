import psycopg
import pytest

from opskit.benchmarking import seed
from opskit.core import schema
from opskit.core.errors import BadInput, DatabaseError, DatabaseNotEmpty, ExitCode, ProblemFound


@pytest.fixture(scope="module")
def small_db_url(test_servers):
    """One `small` seed shared by the proportion tests of this module (read-only)."""
    from tests.conftest import _create_database, _drop_database, _unique_name

    name = _unique_name("small")
    url = _create_database(test_servers, name)
    seed.seed_database(url, "small", 1)
    yield url
    _drop_database(test_servers, name)


def _one(url, query):
    with psycopg.connect(url) as conn:
        return conn.execute(query).fetchone()[0]


def test_same_seed_same_data_other_seed_other_data(fresh_database, tiny_db_url):
    again, other = fresh_database(), fresh_database()
    seed.seed_database(again, "tiny", 1)
    seed.seed_database(other, "tiny", 2)
    with (
        psycopg.connect(tiny_db_url) as a,
        psycopg.connect(again) as b,
        psycopg.connect(other) as c,
    ):
        first, second, third = (schema.table_fingerprints(conn) for conn in (a, b, c))
    assert first == second
    differing = [table for table in schema.APP_TABLES if first[table] != third[table]]
    assert differing == list(schema.APP_TABLES)


def test_row_counts_are_near_the_scale(small_db_url):
    target = seed.SCALES["small"]
    with psycopg.connect(small_db_url) as conn:
        counts = schema.row_counts(conn)
    for table in (
        "users",
        "projects",
        "votes",
        "messages",
        "comments",
        "follows",
        "chains",
        "chain_members",
        "chain_posts",
        "chain_post_replies",
    ):
        assert counts[table] == getattr(target, table), table
    assert 0.95 * target.intro_requests <= counts["intro_requests"] <= target.intro_requests


@pytest.mark.parametrize(
    ("what", "query", "low", "high"),
    [
        ("up share of votes", "SELECT avg((vote_type = 'up')::int) FROM votes", 0.83, 0.87),
        (
            "soft-deleted projects",
            "SELECT avg((deleted_at IS NOT NULL)::int) FROM projects",
            0.035,
            0.065,
        ),
        ("unread messages", "SELECT avg((read_at IS NULL)::int) FROM messages", 0.28, 0.32),
        ("investors", "SELECT avg((role = 'investor')::int) FROM users", 0.02, 0.04),
        (
            "investors with profiles",
            "SELECT avg((p.user_id IS NOT NULL)::int) FROM users u "
            "LEFT JOIN investor_profiles p ON p.user_id = u.id WHERE u.role = 'investor'",
            1,
            1,
        ),
        (
            "votes of the top 1% of projects",
            "SELECT sum(n)::float / (SELECT count(*) FROM votes) FROM (SELECT count(*) n FROM votes "
            "GROUP BY project_id ORDER BY n DESC LIMIT (SELECT count(*) / 100 FROM projects)) t",
            0.05,
            1,
        ),
        (
            "followers of the top 1% of users",
            "SELECT sum(n)::float / (SELECT count(*) FROM follows) FROM (SELECT count(*) n FROM follows "
            "GROUP BY followee_id ORDER BY n DESC LIMIT 50) t",
            0.1,
            1,
        ),
        (
            "messages per conversation pair",
            "SELECT count(*)::float / count(DISTINCT (least(sender_id, recipient_id), "
            "greatest(sender_id, recipient_id))) FROM messages",
            4,
            1000,
        ),
        (
            "days covered by project timestamps",
            "SELECT extract(epoch FROM max(created_at) - min(created_at)) / 86400 FROM projects",
            600,
            731,
        ),
        (
            "chain size spread (largest / smallest)",
            "SELECT max(n)::float / min(n) FROM (SELECT count(*) n FROM chain_members GROUP BY chain_id) t",
            10,
            10_000,
        ),
    ],
)
def test_data_looks_like_the_app(small_db_url, what, query, low, high):
    value = _one(small_db_url, query)
    assert low <= value <= high, f"{what}: {value}"


def test_every_intro_status_is_present_and_answered_ones_have_a_time(small_db_url):
    with psycopg.connect(small_db_url) as conn:
        rows = dict(
            conn.execute(
                "SELECT status, count(*) FILTER (WHERE (responded_at IS NULL) <> (status = 'pending')) "
                "FROM intro_requests GROUP BY status"
            ).fetchall()
        )
    assert set(rows) == {"pending", "accepted", "declined"}
    assert all(inconsistent == 0 for inconsistent in rows.values())


def test_children_never_predate_their_parents(small_db_url):
    assert (
        _one(
            small_db_url,
            """
        SELECT count(*) FROM votes v JOIN projects p ON p.id = v.project_id
        JOIN users u ON u.id = v.user_id
        WHERE v.created_at < p.created_at OR v.created_at < u.created_at
           OR p.created_at < (SELECT created_at FROM users WHERE id = p.owner_id)""",
        )
        == 0
    )


def test_identity_sequences_continue_after_the_seed(tiny_db_url):
    with psycopg.connect(tiny_db_url) as conn:
        new_id = conn.execute(
            "INSERT INTO users (username, display_name, email) VALUES ('new', 'New', 'new@x') RETURNING id"
        ).fetchone()[0]
    assert new_id == seed.SCALES["tiny"].users + 1


def test_a_database_with_data_is_refused_unless_forced(tiny_db_url):
    with pytest.raises(DatabaseNotEmpty) as caught:
        seed.seed_database(tiny_db_url, "tiny", 5)
    assert caught.value.exit_code == ExitCode.PROBLEM_FOUND
    with psycopg.connect(tiny_db_url) as conn:
        before = schema.table_fingerprints(conn)
        assert before["users"] == schema.table_fingerprints(conn)["users"]
    seed.seed_database(tiny_db_url, "tiny", 5, force=True)
    with psycopg.connect(tiny_db_url) as conn:
        assert schema.table_fingerprints(conn) != before


def test_a_failed_seed_leaves_the_database_as_it_was(base_db_url):
    with psycopg.connect(base_db_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE votes ADD CONSTRAINT only_up CHECK (vote_type = 'up')")
    with pytest.raises(DatabaseError, match="only_up") as caught:
        seed.seed_database(base_db_url, "tiny", 1)
    assert caught.value.exit_code == ExitCode.ENVIRONMENT
    with psycopg.connect(base_db_url) as conn:
        assert schema.row_counts(conn) == dict.fromkeys(schema.APP_TABLES, 0)
        indexes = conn.execute(
            "SELECT count(*) FROM pg_indexes WHERE schemaname = 'public'"
        ).fetchone()[0]
    assert indexes > 20  # the keys and indexes dropped for the load are back


def test_a_failed_seed_on_an_empty_database_creates_nothing(empty_db_url):
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        conn.execute("CREATE VIEW investor_profiles AS SELECT 1::bigint AS user_id WHERE false")
    with pytest.raises(DatabaseError):  # fails late: TRUNCATE of a view
        seed.seed_database(empty_db_url, "tiny", 1)
    with psycopg.connect(empty_db_url) as conn:
        assert schema.missing_app_tables(conn) == list(schema.APP_TABLES)


def test_tables_with_triggers_are_refused(base_db_url):
    with psycopg.connect(base_db_url, autocommit=True) as conn:
        conn.execute(
            "CREATE FUNCTION noop() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NULL; END$$"
        )
        conn.execute("CREATE TRIGGER trg_noop AFTER INSERT ON votes EXECUTE FUNCTION noop()")
    with pytest.raises(ProblemFound, match="trg_noop"):
        seed.seed_database(base_db_url, "tiny", 1)


@pytest.mark.parametrize(("scale", "value"), [("huge", 1), ("tiny", -1), ("tiny", 2**31)])
def test_bad_scale_or_seed_is_bad_input(empty_db_url, scale, value):
    with pytest.raises(BadInput) as caught:
        seed.seed_database(empty_db_url, scale, value)
    assert caught.value.exit_code == ExitCode.BAD_INPUT
