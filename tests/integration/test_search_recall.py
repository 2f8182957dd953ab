"""Search forgives one typo in a title word (docs/search.md), on tiny data, in both modes.

Not a speed test: it checks the definition. Every one-edit typo of a title word of 6+ letters
keeps a similarity of at least 3/11 with it (above the threshold), both modes answer each typo
with the same page, and whenever the intended word is the dictionary's single most similar word
to the typo, the first page holds a project whose title contains it.
"""

from __future__ import annotations

import random
from contextlib import ExitStack

import psycopg
import pytest
from starlette.testclient import TestClient

from opskit.app.api import create_app
from opskit.app.endpoints import SEARCH_SIMILARITY_THRESHOLD
from opskit.benchmarking import typos
from opskit.sql import queries
from tests.integration.test_api import settings_for


@pytest.fixture
def typo_set(migrated_db_url) -> list[typos.Typo]:
    with psycopg.connect(migrated_db_url) as conn:
        words = [
            row[0]
            for row in conn.execute(
                queries("api_latency.sql")["bench_typo_words"],
                {"min_length": typos.MIN_WORD_LENGTH},
            )
        ]
    assert len(words) >= 20
    return typos.typo_set(words, random.Random(22))


def nearest_words(conn: psycopg.Connection, text: str) -> list[tuple[str, float]]:
    """The two dictionary words most similar to `text` (words with a digit never match it)."""
    return conn.execute(
        "SELECT word, similarity(word, %(q)s) FROM search_words WHERE word !~ '[0-9]' "
        "ORDER BY similarity(word, %(q)s) DESC, word LIMIT 2",
        {"q": text},
    ).fetchall()


def test_one_typo_finds_the_intended_word_in_both_modes(
    migrated_db_url, redis_url, redis_prefix, tmp_path, typo_set
):
    settings = settings_for(tmp_path, redis_prefix)
    with ExitStack() as stack, psycopg.connect(migrated_db_url) as conn:
        clients = {
            mode: stack.enter_context(
                TestClient(create_app(settings, mode, migrated_db_url, redis_url, pool_size=2))
            )
            for mode in ("before", "after")
        }
        pages = {}
        for case in typo_set:
            similarity = conn.execute("SELECT similarity(%s, %s)", (case.word, case.text))
            assert similarity.fetchone()[0] >= 3 / 11 > SEARCH_SIMILARITY_THRESHOLD, case
            answers = [
                clients[mode].get("/api/search", params={"q": case.text}) for mode in clients
            ]
            assert answers[0].status_code == 200 and answers[0].json() == answers[1].json(), case
            pages[case.text] = answers[1].json()["items"]
        found = typos.recall(typo_set, pages.__getitem__)
        for case in typo_set:
            (best, best_similarity), (_, second_similarity) = nearest_words(conn, case.text)
            if best == case.word and best_similarity > second_similarity:
                titles = [item["title"] for item in pages[case.text] if item["kind"] == "project"]
                assert any(case.word in typos.words_of(title) for title in titles), case
    assert found.typos == len(typo_set) and found.recall >= 0.9, found.misses
