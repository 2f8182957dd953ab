"""After mode's answer cache: anonymous answers of the hot pages are kept per worker until a view
they read changes, and are always the answers before mode gives on the same data.

The after app here keeps answers for a minute (`answer_cache_s=60`), so an answer that is still
right after a write was dropped by the daemon's notification, not by its time-to-live.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from contextlib import ExitStack

import psycopg
import pytest
from starlette.testclient import TestClient

from opskit.app.answercache import APPLICATION_NAME, CHANNEL
from opskit.app.api import create_app
from opskit.engine import refresh
from tests.integration.test_api import (
    _owner_and_foreign_project,
    assert_modes_agree,
    auth,
    read_requests,
    sample,
    settings_for,
    with_params,
)
from tests.integration.test_daemon import _wait_for, daemons  # noqa: F401 (a fixture)

LONG_TTL_S = 60.0


@pytest.fixture
def cached(migrated_db_url, redis_url, redis_prefix, tmp_path) -> Iterator[dict[str, TestClient]]:
    """{mode: TestClient}: before mode, and after mode with its answer cache."""
    settings = settings_for(tmp_path, redis_prefix)
    with ExitStack() as stack:
        clients = {
            mode: stack.enter_context(
                TestClient(
                    create_app(
                        settings,
                        mode,
                        migrated_db_url,
                        redis_url,
                        pool_size=2,
                        answer_cache_s=LONG_TTL_S,
                    )  # fmt: skip
                )
            )
            for mode in ("before", "after")
        }
        assert clients["before"].app.state.api.answers is None  # the baseline is never cached
        assert clients["after"].app.state.api.answers.listening
        yield clients


def _answers(client: TestClient):
    return client.app.state.api.answers


def _before_mode(before: TestClient, path: str, answer, headers=None):
    """Before mode's answer to `path`; for the feed, scored for the after answer's as_of."""
    if isinstance(answer, dict) and "as_of" in answer and "as_of=" not in path:
        path = with_params(path, {"as_of": answer["as_of"]})
    return before.get(path, headers=headers or {}).json()


def _settle(cached: dict[str, TestClient], path: str, headers=None) -> dict:
    """After mode's answer once it is before mode's (a notification is delivered a moment after
    the commit that sent it: well within the freshness bound); fails after 2 s."""
    deadline = time.monotonic() + 2.0
    while True:
        answer = cached["after"].get(path, headers=headers or {}).json()
        expected = _before_mode(cached["before"], path, answer, headers)
        if answer == expected or time.monotonic() > deadline:
            assert answer == expected, path
            return answer
        time.sleep(0.01)


def _execute(url: str, query: str, params=None) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(query, params)


def test_cached_answers_are_before_modes_answers(cached, migrated_db_url):
    data = sample(migrated_db_url)
    requests = list(read_requests(data))
    assert assert_modes_agree(cached, requests) > 150  # fills the cache
    hits = _answers(cached["after"]).hits
    assert assert_modes_agree(cached, requests) > 150  # answered from it
    stats = _answers(cached["after"]).stats()
    assert stats["hits"] - hits > 150 and stats["entries"] > 150


def test_a_change_no_notification_announces_stays_hidden_until_one_does(cached, migrated_db_url):
    """Proves the answers come from the cache and that the notification is what drops them."""
    after, path = cached["after"], "/api/leaderboard/projects?per_page=5"
    first = after.get(path).json()
    top = first["items"][0]
    _execute(
        migrated_db_url,
        "UPDATE mv_leaderboard_projects SET title = 'renamed by hand' WHERE project_id = %s",
        (top["id"],),
    )
    assert after.get(path).json() == first  # kept: nothing said the view changed
    assert after.get("/api/leaderboard/projects?per_page=6").json()["items"][0]["title"] == (
        "renamed by hand"  # another page was not cached yet
    )
    _execute(migrated_db_url, "SELECT pg_notify(%s, 'mv_leaderboard_projects')", (CHANNEL,))
    renamed = {**first, "items": [{**top, "title": "renamed by hand"}, *first["items"][1:]]}
    deadline = time.monotonic() + 2.0
    while after.get(path).json() != renamed:
        assert time.monotonic() < deadline, "the notification did not drop the answer"
        time.sleep(0.01)


def test_writes_show_after_the_batch_that_applies_them(
    cached, migrated_db_url, tmp_path, redis_prefix
):
    after = cached["after"]
    owner, project_id, voter = _owner_and_foreign_project(migrated_db_url)
    paths = [
        f"/api/projects/{project_id}",
        "/api/projects?sort=top&per_page=100",
        "/api/leaderboard/projects?per_page=100",
        "/api/leaderboard/builders?per_page=100",
    ]
    old = {path: after.get(path).json() for path in paths}
    voted = after.post(
        "/api/votes", json={"project_id": project_id, "vote_type": "up"}, headers=auth(voter)
    )
    assert voted.status_code == 200
    for path in paths:
        assert after.get(path).json() == old[path]  # the views do not have the vote yet
    settings = settings_for(tmp_path, redis_prefix)
    refresh.refresh(migrated_db_url, settings, all_views=True)
    for path in paths:
        fresh = _settle(cached, path)
        assert fresh != old[path], path
    assert _settle(cached, paths[0])["upvotes"] == (old[paths[0]]["upvotes"] + 1)

    # a deleted project leaves its page, the feed and search; a new one arrives in them
    title = after.get(paths[0]).json()["title"]
    _execute(migrated_db_url, "UPDATE projects SET deleted_at = now() WHERE id = %s", (project_id,))
    with psycopg.connect(migrated_db_url, autocommit=True) as conn:
        new_id = conn.execute(
            "INSERT INTO projects (owner_id, title, tagline, description)"
            " VALUES (%s, 'Zyxwvutsr answer cache probe', 'probe', 'probe') RETURNING id",
            (owner,),
        ).fetchone()[0]
    searched = "/api/search?q=zyxwvutsr"
    assert after.get(searched).json()["items"] == []
    refresh.refresh(migrated_db_url, settings, all_views=True)
    deadline = time.monotonic() + 2.0
    while after.get(paths[0]).status_code != 404:
        assert time.monotonic() < deadline, "the deleted project's page is still served"
        time.sleep(0.01)
    newest = "/api/projects?sort=newest&per_page=100"
    _settle(cached, newest)
    assert new_id in [item["id"] for item in after.get(newest).json()["items"]]
    assert project_id not in [item["id"] for item in after.get(newest).json()["items"]]
    found = _settle(cached, searched)
    assert [item["id"] for item in found["items"]] == [new_id]
    assert title


def test_the_daemon_invalidates_what_it_applies(cached, daemons, migrated_db_url):  # noqa: F811
    after = cached["after"]
    _, project_id, voter = _owner_and_foreign_project(migrated_db_url)
    path = f"/api/projects/{project_id}"
    upvotes = after.get(path).json()["upvotes"]
    daemons()
    after.post(
        "/api/votes", json={"project_id": project_id, "vote_type": "up"}, headers=auth(voter)
    )
    # within the freshness promise (5 s at most), and the cached answer is before mode's
    _wait_for(lambda: after.get(path).json()["upvotes"] == upvotes + 1, timeout=5.0)
    assert _settle(cached, path)["upvotes"] == upvotes + 1
    assert _answers(after).hits > 0


def test_signed_in_answers_are_never_another_users(cached, migrated_db_url, tmp_path, redis_prefix):
    before, after = cached["before"], cached["after"]
    _, project_id, voter = _owner_and_foreign_project(migrated_db_url)
    after.post(
        "/api/votes", json={"project_id": project_id, "vote_type": "up"}, headers=auth(voter)
    )
    refresh.refresh(migrated_db_url, settings_for(tmp_path, redis_prefix), all_views=True)
    other = next(u for u in sample(migrated_db_url)["users"] if u != voter)
    as_of = after.get("/api/projects").json()["as_of"]
    paths = [f"/api/projects/{project_id}", f"/api/projects?sort=trending&as_of={as_of}"]
    for _ in range(2):  # the second round with every anonymous answer cached
        for path, user in itertools.product(paths, (None, voter, other, voter)):
            headers = auth(user) if user else {}
            answer = after.get(path, headers=headers).json()
            assert answer == before.get(path, headers=headers).json(), (path, user)
            items = answer.get("items", [answer])
            assert all(("has_upvoted" in item) == (user is not None) for item in items)
    page = after.get(paths[0], headers=auth(voter)).json()
    assert page["has_upvoted"] is True
    assert after.get(paths[0], headers=auth(other)).json()["has_upvoted"] is False


def test_no_stale_answer_after_a_full_refresh(cached, migrated_db_url, tmp_path, redis_prefix):
    after = cached["after"]
    paths = ["/api/chains?per_page=100", "/api/investors?per_page=100"]
    old = {path: after.get(path).json() for path in paths}
    with psycopg.connect(migrated_db_url, autocommit=True) as conn:
        chain_id = conn.execute("SELECT min(id) FROM chains").fetchone()[0]
        conn.execute("UPDATE chains SET name = 'renamed chain' WHERE id = %s", (chain_id,))
        conn.execute("UPDATE investor_profiles SET firm = 'Renamed Capital'")
        conn.execute("TRUNCATE mv_change_log, mv_pending_changes")  # only a full build sees them
    settings = settings_for(tmp_path, redis_prefix)
    runs = refresh.refresh(migrated_db_url, settings, all_views=True, full=True)
    assert {run.status for run in runs} == {"completed"}
    for path in paths:
        fresh = _settle(cached, path)
        assert fresh != old[path], path


def test_a_lost_listening_connection_empties_the_cache(cached, migrated_db_url):
    """Notifications sent while it is down are lost: it starts empty once it is back."""
    after, path = cached["after"], "/api/investors?per_page=3"
    first = after.get(path).json()
    _execute(migrated_db_url, "UPDATE mv_investors_directory SET firm = 'Moved Firm'")
    assert after.get(path).json() == first  # cached, and no notification
    _execute(
        migrated_db_url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE application_name = %s AND datname = current_database()",
        (APPLICATION_NAME,),
    )
    moved = {**first, "items": [{**item, "firm": "Moved Firm"} for item in first["items"]]}
    deadline = time.monotonic() + 5.0
    while after.get(path).json() != moved:
        assert time.monotonic() < deadline, "the cache kept its answers past a lost connection"
        time.sleep(0.01)
    _wait_for(lambda: _answers(after).listening, timeout=30.0)  # it reconnects by itself
    assert after.get(path).json() == moved
