import pytest

from opskit.sql import parse_named_blocks, queries


def test_blocks_are_split_on_name_lines():
    text = "-- header\n-- name: first --\nSELECT 1;\n\n-- name: second --\nSELECT 2;\n"
    assert parse_named_blocks(text) == {"first": "SELECT 1;", "second": "SELECT 2;"}


def test_a_name_used_twice_is_an_error():
    with pytest.raises(ValueError, match="twice"):
        parse_named_blocks("-- name: a --\nSELECT 1;\n-- name: a --\nSELECT 2;\n")


def test_seed_file_has_a_block_per_app_table():
    from opskit.core.schema import APP_TABLES

    blocks = queries("seed.sql")
    for table in APP_TABLES:
        assert f"insert_{table}" in blocks


def test_percent_signs_in_parameterized_blocks_are_escaped():
    # psycopg reads % everywhere in a query with parameters, comments included.
    for name, text in queries("seed.sql").items():
        if "%(" in text:
            stripped = text.replace("%%", "").replace("%(", "")
            assert "%" not in stripped, name
