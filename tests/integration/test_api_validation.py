"""The edges of what /openapi.json allows: accepted when the document allows it, refused (4xx
with {"error": ...}, nothing written) when it does not, and 405 with `Allow`, in both modes."""

from __future__ import annotations

import json

import psycopg
import pytest

from opskit.app.api import ROUTES
from opskit.app.openapi import MAX_BODY_BYTES, MAX_ID, MAX_MESSAGE_CHARS, MAX_QUERY_CHARS
from tests.integration.test_api import auth


@pytest.fixture
def ids(migrated_db_url) -> dict:
    with psycopg.connect(migrated_db_url) as conn:
        user, other = [row[0] for row in conn.execute("SELECT id FROM users ORDER BY id LIMIT 2")]
        project = conn.execute(
            "SELECT id FROM projects WHERE deleted_at IS NULL ORDER BY id LIMIT 1"
        ).fetchone()[0]
    return {"user": user, "other": other, "project": project}


@pytest.mark.parametrize("method", ["TRACE", "OPTIONS", "PUT", "DELETE", "PATCH"])
def test_a_method_the_route_does_not_serve_gets_405_with_allow(client, method):
    for route in ROUTES:
        path = route.path.replace("{", "").replace("}", "")  # any value: methods come first
        response = client.request(method, path, headers=auth(1))
        assert response.status_code == 405, (method, route.path)
        assert {name.strip() for name in response.headers["allow"].split(",")} == route.methods
        assert set(response.json()) == {"error"}


def test_what_the_document_allows_is_accepted(client, ids):
    me, other, project = auth(ids["user"]), ids["other"], ids["project"]
    # JSON has one number type: 390.0 is the integer 390; unknown properties are ignored.
    vote = client.post(
        "/api/votes",
        json={"project_id": float(project), "vote_type": "up", "extra": {"x": [1.5, None]}},
        headers=me,
    )
    assert vote.status_code == 200, vote.text
    assert vote.json()["project_id"] == project
    # The longest message, in characters JSON spells with 12 bytes each, fits the body limit.
    longest = "\U0001f600" * MAX_MESSAGE_CHARS
    body = json.dumps({"recipient_id": other, "body": longest}).encode()  # ASCII escapes
    assert len(body) <= MAX_BODY_BYTES
    sent = client.post("/api/messages", content=body, headers=me)
    assert sent.status_code == 201, sent.text
    assert sent.json()["body"] == longest
    # Only spaces and control characters at the ends are dropped, other blanks are text.
    intro = client.post(
        "/api/intros",
        json={"target_id": float(other), "project_id": None, "message": "\n\u00a0hello\t "},
        headers=me,
    )
    assert intro.status_code == 201, intro.text
    assert intro.json()["message"] == "\u00a0hello"
    assert client.get("/api/search", params={"q": "\u00a0"}).status_code == 200
    assert client.get("/api/search", params={"q": "x" * MAX_QUERY_CHARS}).status_code == 200


@pytest.mark.parametrize(
    ("as_of", "echoed"),
    [
        ("2026-11-01t12:00:00.25z", "2026-11-01T12:00:00.250000Z"),  # RFC 3339: any case
        ("2026-11-01T12:00:00", "2026-11-01T12:00:00Z"),  # without an offset: UTC
        ("2026-11-01T12:00:00.123456789+02:00", "2026-11-01T10:00:00.123456Z"),
        ("1990-12-31T23:59:60Z", "1991-01-01T00:00:00Z"),  # a leap second
        ("1990-12-31T15:59:60-08:00", "1991-01-01T00:00:00Z"),
        # In year 0 or 10000 in UTC, which Python cannot hold: answered with the offset asked.
        ("0001-01-01T00:00:00+05:00", "0001-01-01T00:00:00+05:00"),
        ("9999-12-31T23:59:59-23:59", "9999-12-31T23:59:59-23:59"),
    ],
)
def test_every_rfc3339_instant_is_an_as_of(client, as_of, echoed):
    response = client.get("/api/projects", params={"sort": "trending", "as_of": as_of})
    assert response.status_code == 200, response.text
    assert response.json()["as_of"] == echoed


def test_what_the_document_refuses_is_refused_and_writes_nothing(client, ids, migrated_db_url):
    me, other = auth(ids["user"]), ids["other"]
    cases = [
        ("GET", "/api/projects", {"params": {"as_of": "2026-11-01"}}, 400),
        ("GET", "/api/projects", {"params": {"as_of": "2026-11-01 12:00:00Z"}}, 400),
        ("GET", "/api/projects", {"params": {"as_of": "0000-01-01T00:00:00Z"}}, 400),
        ("GET", "/api/projects", {"params": {"as_of": "1990-12-31T12:00:60Z"}}, 400),
        ("GET", "/api/projects", {"params": {"as_of": "9999-12-31T23:59:60Z"}}, 400),
        ("GET", "/api/projects", {"params": {"as_of": "2026-02-30T00:00:00Z"}}, 400),
        ("GET", "/api/search", {"params": {"q": "\x1f \t"}}, 400),
        ("GET", "/api/search", {"params": {"q": " " + "x" * MAX_QUERY_CHARS}}, 400),
        ("POST", "/api/votes", {"json": {"project_id": 1.5, "vote_type": "up"}}, 422),
        ("POST", "/api/votes", {"json": {"project_id": float(2**63), "vote_type": "up"}}, 422),
        ("POST", "/api/votes", {"json": {"project_id": MAX_ID + 1, "vote_type": "up"}}, 422),
        ("POST", "/api/votes", {"content": b'{"project_id": 1e400, "vote_type": "up"}'}, 400),
        ("POST", "/api/messages", {"json": {"recipient_id": other, "body": " \r\n"}}, 422),
        (
            "POST",
            "/api/messages",
            {"json": {"recipient_id": other, "body": "x" * MAX_MESSAGE_CHARS + " "}},
            422,
        ),
        ("POST", "/api/intros", {"json": {"target_id": other, "message": "\x00hi"}}, 422),
        ("POST", "/api/intros", {"json": {"target_id": other, "message": ""}}, 422),
    ]
    with psycopg.connect(migrated_db_url) as conn:
        counts = "SELECT (SELECT count(*) FROM votes), (SELECT count(*) FROM messages)"
        before = conn.execute(counts + ", (SELECT count(*) FROM intro_requests)").fetchone()
    for method, path, kwargs, status in cases:
        response = client.request(method, path, headers=me, **kwargs)
        assert response.status_code == status, (method, path, kwargs, response.text)
        assert set(response.json()) == {"error"}
    with psycopg.connect(migrated_db_url) as conn:
        assert conn.execute(counts + ", (SELECT count(*) FROM intro_requests)").fetchone() == before
