"""Bad input gets a 4xx with {"error": ...}, never a 5xx, a traceback or a partial write."""

from __future__ import annotations

import time

import jwt
import psycopg
import pytest

from opskit.app.api import MAX_BODY_BYTES, VerifiedTokens
from opskit.app.auth import InvalidToken, mint_token, user_id_from_token
from tests.integration.test_api import SECRET, auth

GONE_USER = 10**12  # a well-formed id no user has


@pytest.fixture
def ids(migrated_db_url) -> dict:
    with psycopg.connect(migrated_db_url) as conn:
        user, other = [row[0] for row in conn.execute("SELECT id FROM users ORDER BY id LIMIT 2")]
        deleted_project = conn.execute(
            "SELECT id FROM projects WHERE deleted_at IS NOT NULL LIMIT 1"
        ).fetchone()[0]
        pending = conn.execute(
            "SELECT id, requester_id, target_id FROM intro_requests WHERE status = 'pending' LIMIT 1"
        ).fetchone()
        answered = conn.execute(
            "SELECT id, target_id FROM intro_requests WHERE status <> 'pending' LIMIT 1"
        ).fetchone()
    return {
        "user": user,
        "other": other,
        "deleted_project": deleted_project,
        "pending_intro": pending[0],
        "intro_requester": pending[1],
        "answered_intro": answered[0],
        "answered_target": answered[1],
    }


def _counts(url: str) -> tuple:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT (SELECT count(*) FROM votes), (SELECT count(*) FROM messages),"
            " (SELECT count(*) FROM intro_requests),"
            " (SELECT count(*) FROM intro_requests WHERE status = 'pending')"
        ).fetchone()


def _token(claims: dict, secret: str = SECRET) -> dict:
    return {"Authorization": f"Bearer {jwt.encode(claims, secret)}"}


def cases(ids: dict) -> list[tuple]:
    """(method, path, kwargs, expected status)."""
    me = auth(ids["user"])
    soon = int(time.time()) + 60
    return [
        # tokens
        ("GET", "/api/users/stats", {}, 401),
        ("GET", "/api/users/stats", {"headers": _token({"sub": "1", "exp": soon - 120})}, 401),
        ("GET", "/api/users/stats", {"headers": _token({"sub": "1", "exp": soon}, "x" * 40)}, 401),
        ("GET", "/api/users/stats", {"headers": _token({"sub": "1"})}, 401),
        ("GET", "/api/users/stats", {"headers": {"Authorization": "Bearer garbage"}}, 401),
        ("GET", "/api/users/stats", {"headers": {"Authorization": "Basic dTpw"}}, 401),
        ("GET", "/api/users/stats", {"headers": {"Authorization": "Bearer "}}, 401),
        ("GET", "/api/users/stats", {"headers": auth(GONE_USER)}, 401),
        ("GET", "/api/intros/stats", {"headers": auth(GONE_USER)}, 401),
        ("GET", "/api/messages/conversations", {"headers": auth(GONE_USER)}, 401),
        ("GET", "/api/projects", {"headers": auth(GONE_USER)}, 401),
        ("GET", "/api/projects", {"headers": {"Authorization": "Bearer nope"}}, 401),
        ("POST", "/api/votes", {"json": {"project_id": 1, "vote_type": "up"}}, 401),
        (
            "POST",
            "/api/votes",
            {"json": {"project_id": 1, "vote_type": "up"}, "headers": auth(GONE_USER)},
            401,
        ),
        # query strings
        ("GET", "/api/projects?sort=hot", {}, 400),
        ("GET", "/api/projects?sort=id;DROP TABLE projects", {}, 400),
        ("GET", "/api/projects?page=0", {}, 400),
        ("GET", "/api/projects?page=-1", {}, 400),
        ("GET", "/api/projects?page=abc", {}, 400),
        ("GET", "/api/projects?page=99999999999999999999999", {}, 400),
        ("GET", "/api/projects?page=10001", {}, 400),
        ("GET", "/api/projects?per_page=101", {}, 400),
        ("GET", "/api/projects?per_page=0", {}, 400),
        ("GET", "/api/projects?per_page=1.5", {}, 400),
        ("GET", "/api/projects?as_of=yesterday", {}, 400),
        ("GET", "/api/leaderboard/projects?page=x", {}, 400),
        ("GET", "/api/chains?sort=name", {}, 400),
        ("GET", "/api/search", {}, 400),
        ("GET", "/api/search?q=", {}, 400),
        ("GET", "/api/search?q=%20%20", {}, 400),
        ("GET", "/api/search", {"params": {"q": "x" * 101}}, 400),
        ("GET", "/api/search", {"params": {"q": "a\x00b"}}, 400),
        ("GET", "/api/search", {"params": {"q": "' OR 1=1; --"}}, 200),
        ("GET", "/api/search?q=%FF%FE", {}, 200),  # undecodable bytes become U+FFFD
        # unknown ids
        ("GET", "/api/projects/abc", {}, 404),
        ("GET", "/api/projects/0", {}, 404),
        ("GET", "/api/projects/-3", {}, 404),
        ("GET", "/api/projects/99999999999999999999999", {}, 404),
        ("GET", "/api/projects/9223372036854775807", {}, 404),
        ("GET", f"/api/projects/{ids['deleted_project']}", {}, 404),
        ("GET", "/api/chains/no-such-chain/posts", {}, 404),
        ("GET", "/api/no/such/route", {}, 404),
        ("GET", "/api/votes", {}, 405),
        # bodies
        ("POST", "/api/votes", {"content": b"{not json", "headers": me}, 400),
        ("POST", "/api/votes", {"content": b'{"project_id": "\xff"}', "headers": me}, 400),
        ("POST", "/api/votes", {"content": b"", "headers": me}, 400),
        ("POST", "/api/votes", {"json": [1, 2], "headers": me}, 422),
        ("POST", "/api/votes", {"json": {"vote_type": "up"}, "headers": me}, 422),
        (
            "POST",
            "/api/votes",
            {"json": {"project_id": "1", "vote_type": "up"}, "headers": me},
            422,
        ),
        (
            "POST",
            "/api/votes",
            {"json": {"project_id": True, "vote_type": "up"}, "headers": me},
            422,
        ),
        (
            "POST",
            "/api/votes",
            {"json": {"project_id": 2**63, "vote_type": "up"}, "headers": me},
            422,
        ),
        ("POST", "/api/votes", {"json": {"project_id": 1, "vote_type": "meh"}, "headers": me}, 422),
        (
            "POST",
            "/api/votes",
            {"json": {"project_id": GONE_USER, "vote_type": "up"}, "headers": me},
            404,
        ),
        (
            "POST",
            "/api/votes",
            {"json": {"project_id": ids["deleted_project"], "vote_type": "up"}, "headers": me},
            404,
        ),
        (
            "POST",
            "/api/votes",
            {
                "content": b'{"project_id": 1, "pad": "' + b"x" * MAX_BODY_BYTES + b'"}',
                "headers": me,
            },
            413,
        ),
        (
            "POST",
            "/api/messages",
            {"json": {"recipient_id": ids["user"], "body": "me"}, "headers": me},
            403,
        ),
        (
            "POST",
            "/api/messages",
            {"json": {"recipient_id": GONE_USER, "body": "hi"}, "headers": me},
            404,
        ),
        (
            "POST",
            "/api/messages",
            {"json": {"recipient_id": ids["other"], "body": ""}, "headers": me},
            422,
        ),
        (
            "POST",
            "/api/messages",
            {"json": {"recipient_id": ids["other"], "body": "a\x00"}, "headers": me},
            422,
        ),
        (
            "POST",
            "/api/messages",
            {"json": {"recipient_id": ids["other"], "body": 5}, "headers": me},
            422,
        ),
        ("POST", f"/api/messages/{GONE_USER}/read", {"headers": me}, 404),
        ("POST", "/api/messages/abc/read", {"headers": me}, 404),
        ("POST", "/api/intros", {"json": {"target_id": GONE_USER}, "headers": me}, 404),
        (
            "POST",
            "/api/intros",
            {"json": {"target_id": ids["other"], "project_id": GONE_USER}, "headers": me},
            404,
        ),
        ("POST", "/api/intros", {"json": {"target_id": ids["user"]}, "headers": me}, 403),
        (
            "POST",
            "/api/intros/999999999/respond",
            {"json": {"status": "accepted"}, "headers": me},
            404,
        ),
        (
            "POST",
            f"/api/intros/{ids['pending_intro']}/respond",
            {"json": {"status": "accepted"}, "headers": auth(ids["intro_requester"])},
            403,
        ),
        (
            "POST",
            f"/api/intros/{ids['answered_intro']}/respond",
            {"json": {"status": "declined"}, "headers": auth(ids["answered_target"])},
            409,
        ),
        (
            "POST",
            f"/api/intros/{ids['pending_intro']}/respond",
            {"json": {"status": "maybe"}, "headers": auth(ids["intro_requester"])},
            422,
        ),
    ]


def test_bad_input_gets_the_documented_4xx_and_writes_nothing(client, ids, migrated_db_url):
    counts = _counts(migrated_db_url)
    for method, path, kwargs, status in cases(ids):
        response = client.request(method, path, **kwargs)
        assert response.status_code == status, (method, path, kwargs, response.text)
        assert response.headers["content-type"] == "application/json"
        if status >= 400:
            assert set(response.json()) == {"error"}, (method, path)
            assert "Traceback" not in response.text
    assert _counts(migrated_db_url) == counts


def test_a_token_of_a_deleted_user_stops_working(client, migrated_db_url):
    with psycopg.connect(migrated_db_url) as conn:
        user_id = conn.execute(
            "INSERT INTO users (username, display_name, email) VALUES ('gone', 'Gone', 'g@x')"
            " RETURNING id"
        ).fetchone()[0]
    headers = {"Authorization": f"Bearer {mint_token(SECRET, user_id, 60)}"}
    assert client.get("/api/messages/conversations", headers=headers).status_code == 200
    with psycopg.connect(migrated_db_url) as conn:
        conn.execute("DELETE FROM users WHERE id = %s", (user_id,))
    assert client.get("/api/messages/conversations", headers=headers).status_code == 401
    assert client.get("/api/users/stats", headers=headers).status_code == 401
    for vote_type in ("up", "none"):  # 401 comes before the project's 404
        vote = {"project_id": 1, "vote_type": vote_type}
        assert client.post("/api/votes", json=vote, headers=headers).status_code == 401


def test_a_cached_token_is_verified_again_once_its_exp_has_passed(monkeypatch):
    verified = []

    def verify(secret: str, token: str) -> int:
        verified.append(token)
        return user_id_from_token(secret, token)

    monkeypatch.setattr("opskit.app.api.auth.user_id_from_token", verify)
    tokens = VerifiedTokens(SECRET)
    token = mint_token(SECRET, 7, 60)
    assert tokens.user_id(token) == 7
    assert tokens.user_id(token) == 7
    assert len(verified) == 1  # the second answer came from the cache
    later = time.time() + 61
    monkeypatch.setattr("opskit.app.api.time.time", lambda: later)
    tokens.user_id(token)  # past exp: the full check runs again (and refuses a truly old token)
    assert len(verified) == 2
    with pytest.raises(InvalidToken):
        tokens.user_id(token[:-2] + "xx")  # a bad signature is never cached
    with pytest.raises(InvalidToken):
        tokens.user_id(token[:-2] + "xx")
    assert len(verified) == 4


def test_the_token_cache_keeps_at_most_its_size():
    tokens = VerifiedTokens(SECRET, size=2)
    for user_id in (1, 2, 3):
        assert tokens.user_id(mint_token(SECRET, user_id, 60)) == user_id
    assert len(tokens._known) == 2
