import psycopg
import pytest

from opskit.core import schema
from opskit.core.errors import ExitCode, SchemaMissing


def test_base_schema_is_created_and_idempotent(empty_db_url):
    with psycopg.connect(empty_db_url) as conn:
        assert schema.missing_app_tables(conn) == list(schema.APP_TABLES)
        schema.create_base_schema(conn)
        schema.create_base_schema(conn)
        assert schema.missing_app_tables(conn) == []
        assert schema.row_counts(conn) == dict.fromkeys(schema.APP_TABLES, 0)


def test_missing_schema_is_an_environment_error(empty_db_url):
    with psycopg.connect(empty_db_url) as conn, pytest.raises(SchemaMissing) as caught:
        schema.require_base_schema(conn)
    assert caught.value.exit_code == ExitCode.ENVIRONMENT
    assert "opskit seed" in caught.value.hint


def test_ids_are_bigint_identities(base_db_url):
    with psycopg.connect(base_db_url) as conn:
        rows = conn.execute(
            """SELECT table_name, data_type, is_identity FROM information_schema.columns
               WHERE table_schema = 'public' AND column_name = 'id' ORDER BY 1"""
        ).fetchall()
    assert {name for name, _, _ in rows} == {
        "users",
        "chains",
        "projects",
        "comments",
        "chain_posts",
        "chain_post_replies",
        "messages",
        "intro_requests",
    }
    assert all(dtype == "bigint" and identity == "YES" for _, dtype, identity in rows)


def test_constraints_reject_what_the_contract_forbids(base_db_url):
    with psycopg.connect(base_db_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO users (username, display_name, email) VALUES ('a', 'A', 'a@x'), ('b', 'B', 'b@x')"
        )
        bad = [
            "INSERT INTO users (username, display_name, email, role) VALUES ('c', 'C', 'c@x', 'king')",
            "INSERT INTO users (username, display_name, email) VALUES ('a', 'A2', 'a2@x')",
            "INSERT INTO votes (user_id, project_id, vote_type) VALUES (1, 999, 'up')",
            "INSERT INTO follows (follower_id, followee_id) VALUES (1, 99)",
            "INSERT INTO intro_requests (requester_id, target_id, status) VALUES (1, 2, 'maybe')",
        ]
        for statement in bad:
            with pytest.raises(psycopg.errors.IntegrityError):
                conn.execute(statement)
        # ... and nothing more: docs/interface.md §5 lists no rule against these
        legal = [
            "INSERT INTO follows (follower_id, followee_id) VALUES (1, 1)",
            "INSERT INTO messages (sender_id, recipient_id, body) VALUES (2, 2, 'note')",
            "INSERT INTO investor_profiles (user_id, check_size_min, check_size_max) VALUES (1, 9, 1)",
        ]
        for statement in legal:
            conn.execute(statement)


def test_only_the_indexes_a_normal_app_has(base_db_url):
    """Keys, unique constraints and one index per foreign key; phase 4 adds the rest."""
    with psycopg.connect(base_db_url) as conn:
        rows = conn.execute(
            """SELECT c.relname, i.indisprimary OR i.indisunique, array_length(i.indkey, 1)
               FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
               JOIN pg_class t ON t.oid = i.indrelid
               WHERE t.relnamespace = 'public'::regnamespace"""
        ).fetchall()
    for name, is_key, columns in rows:
        assert is_key or (columns == 1 and name.endswith("_id_idx")), name
