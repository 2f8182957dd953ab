"""Security: forged, expired and orphaned tokens; users confined to their own data; SQL
metacharacters in every string parameter; no password in any command's output or log."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import jwt
import psycopg
import pytest
from typer.testing import CliRunner

from opskit.app.api import create_app
from opskit.cli import app
from opskit.core.schema import table_fingerprints
from tests.cli.test_hostile_input import (
    NO_SERVER_NEEDED,
    PASSWORD,
    SERVER_VERBS,
    UNREACHABLE,
    fill,
)
from tests.integration.test_api import SECRET, auth, settings_for
from tests.integration.test_soak import FAST

METACHARACTERS = [
    "'; DROP TABLE users; --",
    "' OR '1'='1",
    '" OR 1=1 --',
    "1; DELETE FROM votes",
    "%",
    "_%_",
    "\\",
    "$$; SELECT pg_sleep(5); $$",
    "') UNION SELECT password FROM pg_shadow --",
    "ö'ü\"<script>",
]


@pytest.fixture(params=["before", "after"])
def client(request, migrated_db_url, redis_url, redis_prefix, tmp_path):
    from starlette.testclient import TestClient

    app_ = create_app(
        settings_for(tmp_path, redis_prefix), request.param, migrated_db_url, redis_url, pool_size=2
    )
    with TestClient(app_) as test_client:
        yield test_client


@pytest.fixture
def two_users(migrated_db_url) -> tuple[int, int]:
    """Two users who both have conversations and a pending intro sent to them."""
    with psycopg.connect(migrated_db_url) as conn:
        rows = conn.execute(
            "SELECT target_id FROM intro_requests i"
            " WHERE status = 'pending'"
            " AND EXISTS (SELECT FROM messages m WHERE m.recipient_id = i.target_id)"
            " GROUP BY target_id ORDER BY target_id LIMIT 2"
        ).fetchall()
    return rows[0][0], rows[1][0]


def _unsigned(claims: dict) -> str:
    def part(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
def test_forged_expired_and_orphaned_tokens_get_401(client, migrated_db_url, two_users):
    user = two_users[0]
    soon = int(time.time()) + 600
    claims = {"sub": str(user), "exp": soon}
    forged = [
        jwt.encode(claims, "another-secret-that-is-also-long-enough-to-sign"),
        _unsigned(claims),
        jwt.encode(claims, SECRET, algorithm="HS512"),  # only HS256 is accepted
        jwt.encode({"sub": str(user), "exp": int(time.time()) - 5}, SECRET),
        jwt.encode({"sub": f"{user} OR 1=1", "exp": soon}, SECRET),
        jwt.encode({"sub": user, "exp": soon}, SECRET),  # sub must be a string
    ]
    assert client.get("/api/users/stats", headers=auth(user)).status_code == 200
    for token in forged:
        for path in ("/api/users/stats", "/api/messages/conversations", "/api/intros/stats"):
            answer = client.get(path, headers=_bearer(token))
            assert answer.status_code == 401, (token, path, answer.text)
            assert set(answer.json()) == {"error"}

    with psycopg.connect(migrated_db_url, autocommit=True) as conn:
        (gone,) = conn.execute(
            "INSERT INTO users (username, display_name, email) VALUES ('gone', 'G', 'g@x')"
            " RETURNING id"
        ).fetchone()
    token = auth(gone)
    assert client.get("/api/users/stats", headers=token).status_code == 200
    with psycopg.connect(migrated_db_url, autocommit=True) as conn:
        conn.execute("DELETE FROM users WHERE id = %s", (gone,))
    for path in (
        "/api/users/stats",
        "/api/projects",
        "/api/projects?sort=newest",
        "/api/projects/1",
    ):
        answer = client.get(path, headers=token)
        assert answer.status_code == 401, (path, answer.text)
    assert client.get("/api/projects/1").status_code == 200  # the page itself is there
    vote = {"project_id": 1, "vote_type": "up"}
    assert client.post("/api/votes", json=vote, headers=token).status_code == 401


def test_a_user_sees_only_their_own_stats_conversations_and_intros(
    client, migrated_db_url, two_users
):
    me, other = two_users
    # A query string naming another user changes nothing: no endpoint takes one.
    for params in ({}, {"user_id": other}, {"user": other, "id": other}):
        stats = client.get("/api/users/stats", params=params, headers=auth(me)).json()
        assert stats["user_id"] == me
        intros = client.get("/api/intros/stats", params=params, headers=auth(me)).json()
        assert intros["user_id"] == me
        conversations = client.get(
            "/api/messages/conversations", params={**params, "per_page": 100}, headers=auth(me)
        ).json()["items"]
        with psycopg.connect(migrated_db_url) as conn:
            partners = {
                row[0]
                for row in conn.execute(
                    "SELECT CASE WHEN sender_id = %(me)s THEN recipient_id ELSE sender_id END"
                    " FROM messages WHERE %(me)s IN (sender_id, recipient_id)",
                    {"me": me},
                )
            }
        assert conversations and {item["other_user_id"] for item in conversations} <= partners

    # Answering an intro sent to someone else is refused and changes nothing.
    with psycopg.connect(migrated_db_url) as conn:
        (intro,) = conn.execute(
            "SELECT id FROM intro_requests WHERE target_id = %s AND status = 'pending' LIMIT 1",
            (other,),
        ).fetchone()
    answer = client.post(
        f"/api/intros/{intro}/respond", json={"status": "accepted"}, headers=auth(me)
    )
    assert answer.status_code == 403
    with psycopg.connect(migrated_db_url) as conn:
        status = conn.execute(
            "SELECT status FROM intro_requests WHERE id = %s", (intro,)
        ).fetchone()
    assert status == ("pending",)


def test_sql_metacharacters_in_every_string_parameter_change_nothing(
    client, migrated_db_url, two_users
):
    me, other = two_users
    with psycopg.connect(migrated_db_url) as conn:
        before = table_fingerprints(conn)
    reads = []
    for text in METACHARACTERS:
        for name in ("q", "sort", "as_of", "page", "per_page"):
            reads.append(
                f"/api/search?{name}={text}" if name == "q" else f"/api/projects?{name}={text}"
            )
        reads += [
            f"/api/chains?sort={text}",
            f"/api/chains/{text}/posts",
            f"/api/projects/{text}",
            f"/api/leaderboard/projects?page={text}",
            f"/api/investors?per_page={text}",
        ]
    for path in reads:
        answer = client.get(path, headers=auth(me))
        assert answer.status_code < 500, (path, answer.text)
    refused = [
        ("/api/votes", {"project_id": text, "vote_type": "up"}) for text in METACHARACTERS
    ] + [("/api/votes", {"project_id": 1, "vote_type": text}) for text in METACHARACTERS]
    refused += [("/api/messages", {"recipient_id": text, "body": "x"}) for text in METACHARACTERS]
    refused += [(f"/api/messages/{text}/read", None) for text in METACHARACTERS]
    refused += [("/api/intros/1/respond", {"status": text}) for text in METACHARACTERS]
    for path, body in refused:
        answer = client.post(path, json=body, headers=auth(me))
        assert 400 <= answer.status_code < 500, (path, body, answer.text)
    with psycopg.connect(migrated_db_url) as conn:
        assert table_fingerprints(conn) == before

    # Accepted text is stored as it was sent, and touches no other row.
    for text in METACHARACTERS:
        answer = client.post(
            "/api/messages", json={"recipient_id": other, "body": text}, headers=auth(me)
        )
        assert answer.status_code == 201, answer.text
    with psycopg.connect(migrated_db_url) as conn:
        bodies = [
            row[0]
            for row in conn.execute(
                "SELECT body FROM messages WHERE sender_id = %s AND recipient_id = %s"
                " ORDER BY id DESC LIMIT %s",
                (me, other, len(METACHARACTERS)),
            )
        ]
        after = table_fingerprints(conn)
    assert sorted(bodies) == sorted(METACHARACTERS)
    assert {t for t in after if after[t] != before[t]} == {"messages"}


def _with_password(url: str) -> str:
    return psycopg.conninfo.make_conninfo(url, password=PASSWORD)


@pytest.mark.slow
def test_no_verb_prints_a_password(migrated_db_url, redis_url, redis_prefix, tmp_path):
    """Every verb, verbose, against servers that refuse and against ones that answer (trust
    authentication ignores the password); the soak's children's logs too."""
    runner = CliRunner()
    outputs = []
    runs = [fill(args, tmp_path) for args in SERVER_VERBS] + NO_SERVER_NEEDED
    for args in runs:
        outputs.append(runner.invoke(app, ["-v", *args], env=UNREACHABLE).output)
    reachable = {
        "OPSKIT_DATABASE_URL": _with_password(migrated_db_url),
        "OPSKIT_REDIS_URL": redis_url,
        "OPSKIT_REDIS_PREFIX": redis_prefix,
        **FAST,
    }
    out = tmp_path / "soak"
    for args in (
        ["env"],
        ["up"],
        ["status"],
        ["verify"],
        ["migrate", "--dry-run"],
        ["refresh", "--all"],
        ["reconcile", "--fix"],
        ["backfill", "--table", "intro_request_stats"],
        ["soak", "--duration", "1", "--faults", "none", "--no-api", "--out", str(out)],
        ["--debug", "seed", "--scale", "tiny"],
    ):
        result = runner.invoke(app, ["-v", *args], env=reachable)
        outputs.append(result.output)
        assert result.exit_code in (0, 1), (args, result.output)
        if args[0] == "soak":  # the table was printed (the URL is in soak.json, masked)
            assert "drift per reconcile check" in result.output
    outputs += [path.read_text() for path in Path(out).iterdir()]
    leaks = [text for text in outputs if PASSWORD in text]
    assert not leaks, leaks[0][:500]
    assert any("***" in text for text in outputs)  # the URLs were printed, masked
