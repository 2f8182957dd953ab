"""Both API modes give the same JSON on the same database; writes show up where they should.

Each test runs the before and the after app in-process (Starlette's TestClient runs the lifespan,
so the pools open) on one migrated, view-populated `tiny` database and a per-test Redis prefix.
"""

from __future__ import annotations

import itertools
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime
from urllib.parse import urlencode

import psycopg
import pytest
from starlette.testclient import TestClient

from opskit.app import endpoints
from opskit.app.api import create_app
from opskit.app.auth import mint_token
from opskit.core.settings import Settings
from opskit.engine import refresh
from tests.integration.test_phase2_3_views import trending

SECRET = "a-test-secret-for-the-api-that-is-long-enough-even-for-the-hs512-forgery"
AS_OF = ["2026-11-01T00:00:00Z", "2025-06-15T12:30:00+02:00", "2024-01-01t00:00:00.5z"]
NO_RESULT_TERMS = ["zqxjvw", "'; DROP TABLE users; --", "%_%", "\\x"]


def settings_for(tmp_path, redis_prefix: str) -> Settings:
    return Settings.from_env(
        {
            "OPSKIT_HOME": str(tmp_path / "home"),
            "OPSKIT_JWT_SECRET": SECRET,
            "OPSKIT_REDIS_PREFIX": redis_prefix,
        }
    )


@pytest.fixture
def clients(migrated_db_url, redis_url, redis_prefix, tmp_path) -> Iterator[dict[str, TestClient]]:
    """{mode: TestClient} for both modes on the same database."""
    settings = settings_for(tmp_path, redis_prefix)
    with ExitStack() as stack:
        yield {
            mode: stack.enter_context(
                TestClient(create_app(settings, mode, migrated_db_url, redis_url, pool_size=2))
            )
            for mode in ("before", "after")
        }


def auth(user_id: int) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(SECRET, user_id, 600)}"}


def sample(url: str) -> dict:
    """Ids, slugs and words of the tiny data the parameter combinations are built from."""
    with psycopg.connect(url) as conn:

        def column(query: str) -> list:
            return [row[0] for row in conn.execute(query)]

        return {
            # users with projects, messages, intros (sent and received), and one with nothing
            "users": column(
                "(SELECT owner_id FROM projects GROUP BY owner_id ORDER BY count(*) DESC LIMIT 2)"
                " UNION (SELECT recipient_id FROM messages GROUP BY 1 ORDER BY count(*) DESC LIMIT 2)"
                " UNION (SELECT target_id FROM intro_requests GROUP BY 1 ORDER BY count(*) DESC LIMIT 1)"
                " UNION (SELECT requester_id FROM intro_requests ORDER BY id LIMIT 1)"
                " UNION (SELECT u.id FROM users u WHERE NOT EXISTS (SELECT FROM votes WHERE user_id = u.id)"
                "        AND NOT EXISTS (SELECT FROM messages WHERE sender_id = u.id OR recipient_id = u.id) LIMIT 1)"
            ),
            "projects": column(
                "(SELECT id FROM projects WHERE deleted_at IS NULL ORDER BY id LIMIT 4)"
                " UNION ALL (SELECT id FROM projects WHERE deleted_at IS NOT NULL LIMIT 1)"
                " UNION ALL SELECT max(id) + 1000 FROM projects"
            ),
            "slugs": column("SELECT slug FROM chains ORDER BY id") + ["no-such-chain"],
            "words": column(
                "SELECT DISTINCT lower(split_part(title, ' ', 1)) FROM projects ORDER BY 1 LIMIT 4"
            )
            + column("SELECT username FROM users ORDER BY id LIMIT 1")
            + column("SELECT name FROM chains ORDER BY id LIMIT 1"),
            # title words whose one-edit typos keep a similarity of 3/11 or more
            "long_words": column(
                "SELECT DISTINCT lower(split_part(title, ' ', 2)) AS w FROM projects"
                " WHERE length(split_part(title, ' ', 2)) >= 6 ORDER BY 1 LIMIT 2"
            ),
        }


def typos(word: str) -> list[str]:
    """One of each kind of one-edit typo after the first letter (a short word gets one)."""
    if len(word) < 4:
        return [word + "x"]
    return [
        word[:2] + "q" + word[3:],  # substitution
        word[:2] + word[3:],  # deletion
        word[:2] + "e" + word[2:],  # insertion
        word[0] + word[2] + word[1] + word[3:],  # transposition
    ]


# several words: every one must match (a typo in one of them, one that matches nothing)
MULTI_WORD_TERMS = ["defi wallet", "walet defi", "ai  ai", "wallet zqxjvw", "chain 3"]


def read_requests(data: dict) -> Iterator[tuple[str, dict, dict]]:
    """(path, query parameters, headers) of every read combination compared between modes."""
    pages = ["", "page=1&per_page=1", "page=2&per_page=7", "page=3&per_page=100", "page=500"]
    for sort, as_of, page in itertools.product(("trending", "newest", "top"), AS_OF, pages[:4]):
        yield f"/api/projects?sort={sort}&{page}", {"as_of": as_of}, {}
    for user in data["users"]:
        yield "/api/projects?sort=trending&per_page=50", {"as_of": AS_OF[0]}, auth(user)
        yield "/api/projects?sort=top&page=2&per_page=30", {"as_of": AS_OF[1]}, auth(user)
        yield "/api/users/stats", {}, auth(user)
        yield "/api/intros/stats", {}, auth(user)
        for page in pages[:3]:
            yield f"/api/messages/conversations?{page}", {}, auth(user)
    for project_id in data["projects"]:
        yield f"/api/projects/{project_id}", {}, {}
        yield f"/api/projects/{project_id}", {}, auth(data["users"][0])
    for path, page in itertools.product(
        ("/api/leaderboard/projects", "/api/leaderboard/builders", "/api/investors"), pages
    ):
        yield f"{path}?{page}", {}, {}
    for sort, page in itertools.product(("members", "activity", "newest"), pages[:3]):
        yield f"/api/chains?sort={sort}&{page}", {}, {}
    for slug, page in itertools.product(data["slugs"], pages[:3]):
        yield f"/api/chains/{slug}/posts?{page}", {}, {}
    terms = (
        data["words"]
        + [typo for word in data["words"][:4] + data["long_words"] for typo in typos(word)]
        + MULTI_WORD_TERMS
        + NO_RESULT_TERMS
    )
    for term, page in itertools.product(terms, pages[:3]):
        yield f"/api/search?{page}", {"q": term}, {}


def with_params(path: str, params: dict) -> str:
    """The path with `params` added to its query string (httpx's `params=` replaces it)."""
    if not params:
        return path
    return f"{path}{'&' if '?' in path else '?'}{urlencode(params)}"


def assert_modes_agree(clients: dict[str, TestClient], requests) -> int:
    compared = 0
    for path, params, headers in requests:
        url = with_params(path, params)
        before = clients["before"].get(url, headers=headers)
        after = clients["after"].get(url, headers=headers)
        assert before.status_code == after.status_code, (path, params)
        assert before.json() == after.json(), (path, params)
        compared += before.status_code == 200
    return compared


def test_every_read_endpoint_gives_the_same_json_in_both_modes(clients, migrated_db_url):
    data = sample(migrated_db_url)
    compared = assert_modes_agree(clients, read_requests(data))
    assert compared > 150
    # the comparison is not vacuous: lists are full, searches find things, has_upvoted varies
    after = clients["after"]
    feed = after.get("/api/projects?per_page=100", headers=auth(data["users"][0])).json()
    assert len(feed["items"]) > 20
    assert {item["has_upvoted"] for item in feed["items"]} == {True, False}
    assert after.get("/api/search", params={"q": data["words"][0]}).json()["items"]
    assert len(data["long_words"]) == 2
    for word in data["long_words"]:
        for typo in typos(word):
            items = after.get("/api/search", params={"q": typo}).json()["items"]
            assert any(word in item["title"].lower().split() for item in items), typo
    assert after.get("/api/search", params={"q": MULTI_WORD_TERMS[0]}).json()["items"]
    assert after.get("/api/search", params={"q": NO_RESULT_TERMS[0]}).json()["items"] == []


def test_trending_scores_follow_the_formula_at_as_of(clients):
    response = clients["after"].get(
        "/api/projects", params={"sort": "trending", "as_of": "2026-11-01T00:00:00Z"}
    )
    body = response.json()
    assert body["as_of"] == "2026-11-01T00:00:00Z"
    scores = [item["trending_score"] for item in body["items"]]
    assert scores == sorted(scores, reverse=True)
    as_of = datetime.fromisoformat("2026-11-01T00:00:00+00:00")
    for item in body["items"]:
        created_at = datetime.fromisoformat(item["created_at"])
        expected = trending(item["upvotes"] - item["downvotes"], created_at, as_of)
        assert item["trending_score"] == pytest.approx(expected, rel=1e-9)
    assert clients["after"].get("/api/projects").json()["as_of"].endswith("Z")


def _scored_at(url: str) -> str:
    with psycopg.connect(url) as conn:
        instant = conn.execute("SELECT DISTINCT scored_at FROM mv_feed_projects").fetchone()[0]
    return instant.astimezone(UTC).isoformat().replace("+00:00", "Z")


def test_without_as_of_after_mode_answers_for_its_last_refresh_and_before_mode_agrees_then(
    clients, migrated_db_url
):
    """After mode's stored trending scores carry their instant; before mode at it is the same."""
    data = sample(migrated_db_url)
    pages = ["page=1&per_page=1", "page=2&per_page=7", "per_page=100", "page=500"]
    requests = [
        (f"/api/projects?sort={sort}&{page}", headers)
        for sort, page in itertools.product(("trending", "newest", "top"), pages)
        for headers in ({}, auth(data["users"][0]))
    ]
    instants = []
    for stage in ("as migrated", "after a vote was applied", "after the scores aged"):
        scored_at = _scored_at(migrated_db_url)
        instants.append(datetime.fromisoformat(scored_at))
        for path, headers in requests:
            after = clients["after"].get(path, headers=headers).json()
            assert after["as_of"] == scored_at, (stage, path)
            before = clients["before"].get(with_params(path, {"as_of": scored_at}), headers=headers)
            assert before.json() == after, (stage, path)
        if stage == "as migrated":
            _, project_id, voter = _owner_and_foreign_project(migrated_db_url)
            clients["after"].post(
                "/api/votes",
                json={"project_id": project_id, "vote_type": "up"},
                headers=auth(voter),
            )
            # (the template's scores may be older than the default max age: not re-scored here)
            fresh_enough = Settings.from_env({"OPSKIT_TRENDING_MAX_AGE_S": "86400"})
            refresh.refresh(migrated_db_url, fresh_enough, views=["mv_feed_projects"])
        elif stage == "after a vote was applied":
            time.sleep(1.1)
            aged = Settings.from_env({"OPSKIT_TRENDING_MAX_AGE_S": "1"})
            refresh.refresh(migrated_db_url, aged, views=["mv_feed_projects"])
    # A vote's apply scores its rows for the stored instant; the re-scoring moves it for all.
    assert instants[0] == instants[1] < instants[2]


def test_while_the_rows_move_to_a_new_instant_after_mode_ranks_for_the_old_one(
    clients, migrated_db_url, monkeypatch
):
    """The re-scoring moves the feed's rows chunk by chunk; meanwhile they hold two instants,
    and after mode answers for the old one, exactly as before mode does at it."""
    monkeypatch.setattr(refresh, "RESCORE_CHUNK_ROWS", 7)
    requests = [
        f"/api/projects?sort={sort}&{page}"
        for sort, page in itertools.product(
            ("trending", "newest", "top"), ("per_page=100", "page=2&per_page=5")
        )
    ]
    with psycopg.connect(migrated_db_url, autocommit=True) as conn:
        old = conn.execute("SELECT scored_at FROM mv_feed_scoring").fetchone()[0]
        time.sleep(1.1)
        assert refresh.rescore_trending(conn, 1, budget_s=0) == 7  # one chunk, then the budget
        instants = {row[0] for row in conn.execute("SELECT scored_at FROM mv_feed_projects")}
        assert len(instants) == 2 and old in instants
        old_text = old.astimezone(UTC).isoformat().replace("+00:00", "Z")
        for path in requests:
            after = clients["after"].get(path).json()
            assert after["as_of"] == old_text, path
            assert clients["before"].get(with_params(path, {"as_of": old_text})).json() == after
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            assert refresh.diff_against_definition(conn, "mv_feed_projects").differing == []
        refresh.rescore_trending(conn, 1, budget_s=60)
        (new,) = {row[0] for row in conn.execute("SELECT scored_at FROM mv_feed_projects")}
        assert new > old
        assert conn.execute("SELECT scored_at, rescoring_to FROM mv_feed_scoring").fetchone() == (
            new,
            None,
        )
    trending = clients["after"].get("/api/projects?per_page=100").json()
    scores = [item["trending_score"] for item in trending["items"]]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) > 10
    now = clients["before"].get("/api/projects").json()["as_of"]  # before mode scores for now
    assert datetime.fromisoformat(now) > datetime.fromisoformat(trending["as_of"])


def _owner_and_foreign_project(url: str) -> tuple[int, int, int]:
    """(owner, one of their live projects, a user who has not voted on it)."""
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT p.owner_id, p.id, u.id FROM projects p CROSS JOIN LATERAL ("
            "  SELECT id FROM users u WHERE u.id <> p.owner_id AND NOT EXISTS ("
            "    SELECT FROM votes v WHERE v.user_id = u.id AND v.project_id = p.id) LIMIT 1) u"
            " WHERE p.deleted_at IS NULL ORDER BY p.id LIMIT 1"
        ).fetchone()


def test_writes_show_in_denormalized_reads_at_once_and_in_views_after_a_refresh(
    clients, migrated_db_url, tmp_path, redis_prefix
):
    owner, project_id, voter = _owner_and_foreign_project(migrated_db_url)
    after = clients["after"]
    stats_before = after.get("/api/users/stats", headers=auth(owner)).json()
    feed_path = f"/api/projects/{project_id}"
    detail_before = after.get(feed_path, headers=auth(voter)).json()
    assert detail_before["has_upvoted"] is False

    voted = after.post(
        "/api/votes", json={"project_id": project_id, "vote_type": "up"}, headers=auth(voter)
    )
    assert voted.status_code == 200
    assert voted.json()["upvotes"] == detail_before["upvotes"] + 1
    assert voted.json()["has_upvoted"] is True
    # denormalized relations and the vote cache: at once
    stats = after.get("/api/users/stats", headers=auth(owner)).json()
    assert stats["upvotes_received"] == stats_before["upvotes_received"] + 1
    assert after.get(feed_path, headers=auth(voter)).json()["has_upvoted"] is True
    # the views: only after a refresh
    assert after.get(feed_path).json()["upvotes"] == detail_before["upvotes"]

    sent = after.post(
        "/api/messages", json={"recipient_id": owner, "body": "hello there"}, headers=auth(voter)
    )
    assert sent.status_code == 201
    conversation = after.get("/api/messages/conversations", headers=auth(owner)).json()["items"][0]
    assert conversation["other_user_id"] == voter
    assert conversation["last_message_id"] == sent.json()["id"]
    assert conversation["unread_count"] >= 1
    marked = after.post(f"/api/messages/{voter}/read", headers=auth(owner))
    assert marked.json()["marked_read"] == conversation["unread_count"]
    conversation = after.get("/api/messages/conversations", headers=auth(owner)).json()["items"][0]
    assert conversation["unread_count"] == 0

    intro = after.post(
        "/api/intros", json={"target_id": owner, "message": "hi"}, headers=auth(voter)
    )
    assert intro.status_code == 201 and intro.json()["status"] == "pending"
    received = after.get("/api/intros/stats", headers=auth(owner)).json()
    answered = after.post(
        f"/api/intros/{intro.json()['id']}/respond",
        json={"status": "accepted"},
        headers=auth(owner),
    )
    assert answered.status_code == 200 and answered.json()["status"] == "accepted"
    now = after.get("/api/intros/stats", headers=auth(owner)).json()
    assert now["received_pending"] == received["received_pending"] - 1
    assert now["received_accepted"] == received["received_accepted"] + 1

    refresh.refresh(migrated_db_url, settings_for(tmp_path, redis_prefix), all_views=True)
    assert after.get(feed_path).json()["upvotes"] == detail_before["upvotes"] + 1
    data = sample(migrated_db_url)
    assert_modes_agree(clients, itertools.islice(read_requests(data), 0, None, 3))

    # 'none' removes the vote; the cache follows after commit
    removed = after.post(
        "/api/votes", json={"project_id": project_id, "vote_type": "none"}, headers=auth(voter)
    )
    assert removed.json()["upvotes"] == detail_before["upvotes"]
    assert after.get(feed_path, headers=auth(voter)).json()["has_upvoted"] is False


def test_before_mode_writes_are_the_same_statements(clients, migrated_db_url):
    owner, project_id, voter = _owner_and_foreign_project(migrated_db_url)
    before = clients["before"]
    for vote_type, upvoted in (("down", False), ("up", True), ("none", False)):
        answer = before.post(
            "/api/votes",
            json={"project_id": project_id, "vote_type": vote_type},
            headers=auth(voter),
        ).json()
        assert answer["has_upvoted"] is upvoted
        detail = before.get(f"/api/projects/{project_id}", headers=auth(voter)).json()
        assert detail["has_upvoted"] is upvoted
        assert (detail["upvotes"], detail["downvotes"]) == (answer["upvotes"], answer["downvotes"])


@pytest.mark.parametrize("recent_scan", [3, 12, 40])
def test_after_mode_shortcuts_give_the_same_pages(
    clients, migrated_db_url, monkeypatch, recent_scan
):
    """Small scans make the trending shortcut decide on tiny data, both ways; small pages make
    search's pruning keep only the most similar words (a word's postings fill the page)."""
    monkeypatch.setattr(endpoints, "TRENDING_RECENT_SCAN", recent_scan)
    data = sample(migrated_db_url)
    pages = ["page=1&per_page=1", "page=1&per_page=2", "page=2&per_page=3", "page=4&per_page=5"]
    requests = [
        ("/api/projects?sort=trending&" + page, {"as_of": as_of}, {})
        for page, as_of in itertools.product(pages + ["per_page=30"], AS_OF)
    ] + [
        ("/api/search?" + page, {"q": term}, {})
        for page, term in itertools.product(
            pages, data["words"] + ["chain", "builder", "chian", "buider", "chain builder"]
        )
    ]
    assert assert_modes_agree(clients, requests) == len(requests)


def test_has_upvoted_comes_from_the_database_when_redis_is_unreachable(
    clients, migrated_db_url, redis_prefix, tmp_path
):
    """The feed and the project page (whose Redis read runs beside its query) fall back."""
    data = sample(migrated_db_url)
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        dead_redis = f"redis://127.0.0.1:{probe.getsockname()[1]}/0"
    app = create_app(
        settings_for(tmp_path, redis_prefix), "after", migrated_db_url, dead_redis, pool_size=2
    )
    with psycopg.connect(migrated_db_url) as conn:
        voter, upvoted = conn.execute(
            "SELECT user_id, min(project_id) FROM votes WHERE vote_type = 'up'"
            " GROUP BY user_id ORDER BY count(*) DESC LIMIT 1"
        ).fetchone()
    paths = [f"/api/projects?sort=top&per_page=100&as_of={AS_OF[0]}", f"/api/projects/{upvoted}"]
    paths += [f"/api/projects/{project_id}" for project_id in data["projects"][:5]]
    with TestClient(app) as no_cache:
        for path in paths:
            expected = clients["before"].get(path, headers=auth(voter))
            answer = no_cache.get(path, headers=auth(voter))
            assert answer.status_code == expected.status_code, path  # some are deleted: 404
            assert answer.json() == expected.json(), path
        assert no_cache.get(f"/api/projects/{upvoted}", headers=auth(voter)).json()["has_upvoted"]
        assert no_cache.get("/api/health").json()["vote_cache_failures"] >= len(paths)
