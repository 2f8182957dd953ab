"""`opskit reconcile`: injected drift is found in full, --fix repairs it, a re-run reports 0."""

import asyncio
import json
import socket

import psycopg
import pytest
import redis
from typer.testing import CliRunner

from opskit.cli import app
from opskit.core.settings import Settings
from opskit.engine import refresh, votecache
from opskit.engine.reconcile import id_ranges
from opskit.engine.truth import DENORMALIZED, diff_against_truth
from opskit.engine.votecache import VoteCache, upvotes_key
from opskit.sql import queries

SPECS = {spec.relation: spec for spec in DENORMALIZED}

# docs/interface.md §6 written the obvious way (a subquery per value), independently of
# truth.sql, whose blocks are written for speed.
ORACLE = {
    "truth_user_dashboard_stats": """
        SELECT u.id,
          (SELECT count(*) FROM projects p WHERE p.owner_id = u.id AND p.deleted_at IS NULL),
          (SELECT count(*) FROM votes v JOIN projects p ON p.id = v.project_id
            WHERE p.owner_id = u.id AND p.deleted_at IS NULL AND v.vote_type = 'up'),
          (SELECT count(*) FROM votes v JOIN projects p ON p.id = v.project_id
            WHERE p.owner_id = u.id AND p.deleted_at IS NULL AND v.vote_type = 'down'),
          (SELECT count(*) FROM comments c JOIN projects p ON p.id = c.project_id
            WHERE p.owner_id = u.id AND p.deleted_at IS NULL),
          (SELECT count(*) FROM votes v WHERE v.user_id = u.id),
          (SELECT count(*) FROM follows f WHERE f.followee_id = u.id),
          (SELECT count(*) FROM follows f WHERE f.follower_id = u.id),
          (SELECT count(*) FROM messages m WHERE m.recipient_id = u.id AND m.read_at IS NULL),
          (SELECT count(*) FROM intro_requests i WHERE i.target_id = u.id AND i.status = 'pending')
        FROM users u""",
    "truth_message_conversations": """
        SELECT c.u, c.o,
          (SELECT count(*) FROM messages m
            WHERE (m.sender_id, m.recipient_id) IN ((c.u, c.o), (c.o, c.u))),
          (SELECT count(*) FROM messages m
            WHERE m.sender_id = c.o AND m.recipient_id = c.u AND m.read_at IS NULL),
          last.id, last.created_at, last.sender_id, left(last.body, 100)
        FROM (SELECT sender_id AS u, recipient_id AS o FROM messages
              UNION SELECT recipient_id, sender_id FROM messages) c
        CROSS JOIN LATERAL (
          SELECT m.id, m.created_at, m.sender_id, m.body FROM messages m
          WHERE (m.sender_id, m.recipient_id) IN ((c.u, c.o), (c.o, c.u))
          ORDER BY m.created_at DESC, m.id DESC LIMIT 1) last""",
    "truth_intro_request_stats": """
        SELECT u.id,
          (SELECT count(*) FROM intro_requests i WHERE i.requester_id = u.id),
          (SELECT count(*) FROM intro_requests i WHERE i.requester_id = u.id AND i.status = 'pending'),
          (SELECT count(*) FROM intro_requests i WHERE i.requester_id = u.id AND i.status = 'accepted'),
          (SELECT count(*) FROM intro_requests i WHERE i.requester_id = u.id AND i.status = 'declined'),
          (SELECT count(*) FROM intro_requests i WHERE i.target_id = u.id),
          (SELECT count(*) FROM intro_requests i WHERE i.target_id = u.id AND i.status = 'pending'),
          (SELECT count(*) FROM intro_requests i WHERE i.target_id = u.id AND i.status = 'accepted'),
          (SELECT count(*) FROM intro_requests i WHERE i.target_id = u.id AND i.status = 'declined')
        FROM users u""",
}


@pytest.fixture
def run(migrated_db_url, redis_url, redis_prefix):
    # The migration's catch-up requests would count as overdue views once the template is older
    # than max wait: start from fresh views.
    refresh.refresh(migrated_db_url, Settings.from_env({}), all_views=True)

    def invoke(*args, database_url=migrated_db_url, redis=redis_url):
        env = {
            "OPSKIT_DATABASE_URL": database_url,
            "OPSKIT_REDIS_URL": redis,
            "OPSKIT_REDIS_PREFIX": redis_prefix,
        }
        return CliRunner().invoke(app, ["reconcile", *args], env=env, catch_exceptions=False)

    return invoke


def _report(result):
    return json.loads(result.stdout)


def _checks(report):
    return {check["name"]: check for check in report["checks"]}


def _bump_dashboard_base(conn, user_ids):
    conn.execute(
        "INSERT INTO user_dashboard_stats_base (user_id, followers_count) "
        "SELECT unnest(%s::bigint[]), 1000 "
        "ON CONFLICT (user_id) DO UPDATE "
        "SET followers_count = user_dashboard_stats_base.followers_count + 1000",
        (user_ids,),
    )


def _cache_users(url, redis_url, prefix, count):
    """Cache the vote sets of `count` users with upvotes; return their ids."""
    with psycopg.connect(url) as conn:
        users = [
            row[0]
            for row in conn.execute(
                "SELECT DISTINCT user_id FROM votes WHERE vote_type = 'up' ORDER BY 1 LIMIT %s",
                (count,),
            )
        ]
        rebuilt = votecache.rebuild_users(redis.Redis.from_url(redis_url), conn, prefix, users)
    assert rebuilt == users
    return users


def _edge_cases(conn):
    """Rows the truth queries could get wrong: ties for the newest message, unread mail both
    ways, messages to oneself, a self-follow, a deleted project with votes and comments, a
    restored one, a user with nothing."""
    users = [
        row[0]
        for row in conn.execute(
            "INSERT INTO users (username, display_name, email) SELECT 'edge' || g, 'Edge', 'edge' || g || '@x' "
            "FROM generate_series(1, 4) g RETURNING id"
        )
    ]
    a, b, c, _ = users
    conn.execute(
        "INSERT INTO messages (sender_id, recipient_id, body, created_at, read_at) VALUES "
        "(%(a)s, %(b)s, 'older', '2026-01-01', NULL), "
        "(%(b)s, %(a)s, 'tie, lower id', '2026-01-02', NULL), "
        "(%(a)s, %(b)s, 'tie, higher id: the newest', '2026-01-02', '2026-01-03'), "
        "(%(c)s, %(a)s, repeat('long ', 40), '2026-01-05', NULL), "
        "(%(c)s, %(c)s, 'note to self', '2026-01-06', NULL), "
        "(%(c)s, %(c)s, 'read note to self', '2026-01-04', '2026-01-04')",
        {"a": a, "b": b, "c": c},
    )
    conn.execute("INSERT INTO follows (follower_id, followee_id) VALUES (%s, %s)", (c, c))
    deleted, restored = [
        row[0]
        for row in conn.execute(
            "INSERT INTO projects (owner_id, title) VALUES (%(b)s, 'gone'), (%(b)s, 'back') "
            "RETURNING id",
            {"b": b},
        )
    ]
    conn.execute(
        "INSERT INTO votes (user_id, project_id, vote_type) VALUES "
        "(%(a)s, %(deleted)s, 'up'), (%(c)s, %(deleted)s, 'down'), (%(a)s, %(restored)s, 'down')",
        {"a": a, "c": c, "deleted": deleted, "restored": restored},
    )
    conn.execute(
        "INSERT INTO comments (project_id, user_id, body) VALUES (%s, %s, 'x'), (%s, %s, 'y')",
        (deleted, a, restored, c),
    )
    conn.execute("UPDATE projects SET deleted_at = now() WHERE id IN (%s, %s)", (deleted, restored))
    conn.execute("UPDATE projects SET deleted_at = NULL WHERE id = %s", (restored,))


@pytest.mark.parametrize("block", sorted(ORACLE))
def test_each_truth_query_equals_the_contract_written_plainly(tiny_db_url, block):
    with psycopg.connect(tiny_db_url, autocommit=True) as conn:
        _edge_cases(conn)
        truth = queries("truth.sql")[block].rstrip(";")
        rows = conn.execute(truth).fetchall()
        assert len(rows) > 100
        assert sorted(rows) == sorted(conn.execute(ORACLE[block]).fetchall())


def _exact_counts(conn):
    """The app rows each truth counts (truth.sql's source_rows_* blocks), counted directly."""
    return {
        "user_dashboard_stats": conn.execute(
            "SELECT (SELECT count(*) FROM users)"
            " + (SELECT count(*) FROM projects WHERE deleted_at IS NULL)"
            " + (SELECT count(*) FROM votes)"
            " + (SELECT count(*) FROM comments c JOIN projects p ON p.id = c.project_id"
            "    WHERE p.deleted_at IS NULL)"
            " + (SELECT count(*) FROM follows)"
            " + (SELECT count(*) FROM messages WHERE read_at IS NULL)"
            " + (SELECT count(*) FROM intro_requests WHERE status = 'pending')"
        ).fetchone()[0],
        "message_conversations_denorm": conn.execute("SELECT count(*) FROM messages").fetchone()[0],
        "intro_request_stats": conn.execute(
            "SELECT (SELECT count(*) FROM users) + (SELECT count(*) FROM intro_requests)"
        ).fetchone()[0],
    }


def test_source_rows_are_the_app_rows_each_truth_counts(migrated_db_url):
    with psycopg.connect(migrated_db_url, autocommit=True) as conn:
        expected = _exact_counts(conn)
        # A relation row without truth (a conversation that never happened) counts nothing.
        conn.execute(
            "INSERT INTO message_conversations_denorm (user_id, other_user_id, message_count) "
            "SELECT a.id, b.id, 5 FROM users a, users b WHERE a.id < b.id AND NOT EXISTS ("
            "SELECT FROM messages WHERE sender_id IN (a.id, b.id) AND recipient_id IN (a.id, b.id))"
            " LIMIT 1"
        )
        diffs = {spec.relation: diff_against_truth(conn, spec) for spec in DENORMALIZED}
    assert {name: diff.source_rows for name, diff in diffs.items()} == expected
    assert diffs["message_conversations_denorm"].differing == 1


def test_planner_settings_apply_to_the_diff_only(migrated_db_url):
    spec = SPECS["user_dashboard_stats"]
    with psycopg.connect(migrated_db_url, autocommit=True) as conn:
        with conn.transaction():  # a caller's transaction, like verify's snapshot
            conn.execute("SET LOCAL work_mem = '1MB'")
            diff_against_truth(conn, spec)
            settings = conn.execute(
                "SELECT current_setting('work_mem'), current_setting('enable_hashagg')"
            ).fetchone()
        assert settings == ("1MB", "on")
        diff_against_truth(conn, spec)  # its own transaction, on an autocommit connection
        assert conn.execute("SHOW enable_hashagg").fetchone()[0] == "on"


def test_id_ranges_cover_every_id_within_the_width():
    assert id_ranges([9, 1, 3, 12, 3], 5) == [(1, 4), (9, 13)]
    assert id_ranges([], 5) == []


def test_a_clean_database_has_no_drift_and_the_run_is_recorded(run, migrated_db_url):
    result = run("--json")
    assert result.exit_code == 0, result.output
    report = _report(result)
    assert report["drift_total"] == 0
    checks = _checks(report)
    assert set(checks) == {
        "user_dashboard_stats",
        "message_conversations_denorm",
        "intro_request_stats",
        "redis_upvotes",
        "view_freshness",
    }
    assert checks["user_dashboard_stats"]["rows_checked"] > 0
    assert checks["view_freshness"]["rows_checked"] == 8
    with psycopg.connect(migrated_db_url) as conn:
        expected_source_rows = _exact_counts(conn)
    assert {name: checks[name]["source_rows"] for name in SPECS} == expected_source_rows
    assert report["source_rows"] == sum(expected_source_rows.values())
    assert checks["redis_upvotes"]["source_rows"] is None
    assert report["relations_seconds"] > 0
    assert report["source_rows_per_s"] == round(report["source_rows"] / report["relations_seconds"])
    assert report["truth_rows_per_s"] == round(
        sum(checks[name]["rows_checked"] for name in SPECS) / report["relations_seconds"]
    )
    assert all(
        set(check) >= {"name", "rows_checked", "drift", "fixed"} for check in report["checks"]
    )
    with psycopg.connect(migrated_db_url) as conn:
        recorded = conn.execute(
            "SELECT id, drift_total, rows_checked FROM opskit_reconcile_runs"
        ).fetchall()
    assert recorded == [(report["run_id"], 0, sum(c["rows_checked"] for c in report["checks"]))]


def test_every_injected_drift_is_found_fixed_and_gone_on_the_next_run(
    run, migrated_db_url, redis_url, redis_prefix
):
    cached = _cache_users(migrated_db_url, redis_url, redis_prefix, 4)
    plain = redis.Redis.from_url(redis_url)
    with psycopg.connect(migrated_db_url, autocommit=True) as conn:
        # Edited denormalized rows: 3 dashboard users, 2 conversation rows changed + 1 deleted,
        # 1 intro user.
        _bump_dashboard_base(conn, [1, 2, 3])
        conn.execute(
            "UPDATE message_conversations_denorm SET unread_count = unread_count + 7 "
            "WHERE (user_id, other_user_id) IN (SELECT user_id, other_user_id "
            "FROM message_conversations_denorm ORDER BY 1, 2 LIMIT 2)"
        )
        conn.execute(
            "DELETE FROM message_conversations_denorm WHERE (user_id, other_user_id) = "
            "(SELECT user_id, other_user_id FROM message_conversations_denorm ORDER BY 1 DESC, 2 DESC LIMIT 1)"
        )
        conn.execute(
            "INSERT INTO intro_request_stats_base (user_id, sent_total) VALUES (4, 50) "
            "ON CONFLICT (user_id) DO UPDATE SET sent_total = intro_request_stats_base.sent_total + 50"
        )
        # A trigger disabled during writes: follows between users 10..13 go uncounted.
        conn.execute("DELETE FROM follows WHERE follower_id IN (10, 12)")
        with conn.transaction():
            conn.execute("ALTER TABLE follows DISABLE TRIGGER trg_opskit_follows_ins")
            conn.execute("INSERT INTO follows (follower_id, followee_id) VALUES (10, 11), (12, 13)")
            conn.execute("ALTER TABLE follows ENABLE TRIGGER trg_opskit_follows_ins")
        # A change to a post far older than the freshness promise, applied by no daemon.
        conn.execute(
            "INSERT INTO mv_change_log (changed_at, entity, entity_id) "
            "VALUES (now() - interval '1 hour', 'post', 1)"
        )
    # Altered Redis keys: a member added, a member removed; a deleted key is "not cached".
    plain.sadd(upvotes_key(redis_prefix, cached[0]), 999_999)
    plain.srem(
        upvotes_key(redis_prefix, cached[1]), *plain.smembers(upvotes_key(redis_prefix, cached[1]))
    )
    plain.sadd(upvotes_key(redis_prefix, cached[1]), 999_998)
    plain.delete(upvotes_key(redis_prefix, cached[2]))
    # Keys that hold no set of project ids: another type, a member that is no integer.
    plain.delete(upvotes_key(redis_prefix, cached[3]))
    plain.set(upvotes_key(redis_prefix, cached[3]), "garbage")
    plain.sadd(upvotes_key(redis_prefix, cached[0]), "not-a-project")

    found = run("--json")
    assert found.exit_code == 1
    drift = {name: check["drift"] for name, check in _checks(_report(found)).items()}
    assert drift == {
        "user_dashboard_stats": 3 + 4,
        "message_conversations_denorm": 3,
        "intro_request_stats": 1,
        "redis_upvotes": 3,
        "view_freshness": 1,
    }

    fixed = run("--fix", "--json")
    assert fixed.exit_code == 1  # drift was found, even though it was fixed
    for check in _report(fixed)["checks"]:
        assert (check["fixed"], check["remaining"]) == (check["drift"], 0), check

    again = run("--json")
    assert again.exit_code == 0, again.output
    assert _report(again)["drift_total"] == 0
    with psycopg.connect(migrated_db_url) as conn:
        assert conn.execute(
            "SELECT array_agg(drift_total ORDER BY id) FROM opskit_reconcile_runs"
        ).fetchone()[0] == [15, 15, 0]


def test_flushed_keys_are_not_drift_and_the_cache_rebuilds(
    run, migrated_db_url, redis_url, redis_prefix
):
    cached = _cache_users(migrated_db_url, redis_url, redis_prefix, 5)
    plain = redis.Redis.from_url(redis_url)
    plain.delete(*plain.keys(f"{redis_prefix}*"))  # FLUSHALL, limited to this test's keys
    report = _report(run("--json"))
    assert _checks(report)["redis_upvotes"] == {
        **_checks(report)["redis_upvotes"],
        "rows_checked": 0,
        "drift": 0,
    }

    async def read_back():
        client = votecache.redis_async_client(redis_url, timeout_s=2.0)  # a busy machine
        async with await psycopg.AsyncConnection.connect(migrated_db_url) as conn:
            cache = VoteCache(client, redis_prefix, timeout_s=2.0)
            answers = [
                await cache.upvoted_among(conn, user, list(range(1, 200))) for user in cached
            ]
        await client.aclose()
        return answers

    answers = asyncio.run(read_back())
    assert all(answers)
    assert _checks(_report(run("--json")))["redis_upvotes"]["rows_checked"] == 5


def test_votes_while_redis_is_down_leave_drift_that_reconcile_heals(
    run, migrated_db_url, redis_url, redis_prefix
):
    (user,) = _cache_users(migrated_db_url, redis_url, redis_prefix, 1)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_url = f"redis://127.0.0.1:{probe.getsockname()[1]}/0"

    async def vote_while_down():
        client = votecache.redis_async_client(dead_url)
        cache = VoteCache(client, redis_prefix)
        async with await psycopg.AsyncConnection.connect(migrated_db_url, autocommit=True) as conn:
            project = await (
                await conn.execute(
                    "SELECT id FROM projects p WHERE NOT EXISTS (SELECT FROM votes v "
                    "WHERE v.project_id = p.id AND v.user_id = %s) ORDER BY id LIMIT 1",
                    (user,),
                )
            ).fetchone()
            await conn.execute("INSERT INTO votes VALUES (%s, %s, 'up')", (user, project[0]))
            await cache.record_vote(user, project[0], "up")  # the write succeeds anyway
            answer = await cache.upvoted_among(conn, user, [project[0]])  # read falls back
        await client.aclose()
        return answer, project[0], cache.failures

    answer, project, failures = asyncio.run(vote_while_down())
    assert answer == {project} and failures == 2

    report = _report(run("--fix", "--json"))
    assert (
        _checks(report)["redis_upvotes"]["drift"],
        _checks(report)["redis_upvotes"]["fixed"],
    ) == (1, 1)
    assert project in {
        int(m) for m in redis.Redis.from_url(redis_url).smembers(upvotes_key(redis_prefix, user))
    }
    assert _report(run("--json"))["drift_total"] == 0


def test_unreachable_servers_and_unmigrated_databases_exit_3(run, base_db_url):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_url = f"redis://127.0.0.1:{probe.getsockname()[1]}/0"
    down = run("--json", redis=dead_url)
    assert down.exit_code == 3 and "cannot connect to Redis" in down.output
    unmigrated = run(database_url=base_db_url)
    assert unmigrated.exit_code == 3 and "opskit migrate" in unmigrated.output


def test_a_repair_reaches_the_builders_leaderboard_built_from_the_drifted_counts(
    run, migrated_db_url
):
    """mv_leaderboard_builders reads user_dashboard_stats: a builder's row recomputed while
    that relation drifted carries the drift, and the repair must send it round again."""
    settings = Settings.from_env({})
    with psycopg.connect(migrated_db_url, autocommit=True) as conn:
        builder, project = conn.execute(
            "SELECT owner_id, id FROM projects WHERE deleted_at IS NULL ORDER BY id LIMIT 1"
        ).fetchone()
        _bump_dashboard_base(conn, [builder])  # a trigger outage's drift
        conn.execute(  # a change of theirs recomputes their row from the drifted counts
            "UPDATE projects SET title = title || '!' WHERE id = %s", (project,)
        )
        refresh.refresh(migrated_db_url, settings, views=["mv_leaderboard_builders"])
        followers_shown = "SELECT followers_count FROM mv_leaderboard_builders WHERE user_id = %s"
        followers = "SELECT count(*) FROM follows WHERE followee_id = %s"
        assert conn.execute(followers_shown, (builder,)).fetchone()[0] == (
            conn.execute(followers, (builder,)).fetchone()[0] + 1000
        )

        assert run("--fix", "--json").exit_code == 1  # drift found, and repaired
        refresh.refresh(migrated_db_url, settings, views=["mv_leaderboard_builders"])
        assert (
            conn.execute(followers_shown, (builder,)).fetchone()[0]
            == conn.execute(followers, (builder,)).fetchone()[0]
        )
