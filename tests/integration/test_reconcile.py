"""`opskit reconcile`: injected drift is found in full, --fix repairs it, a re-run reports 0."""

import asyncio
import json
import socket

import psycopg
import pytest
import redis
from typer.testing import CliRunner

from opskit import refresh, votecache
from opskit.cli import app
from opskit.reconcile import id_ranges
from opskit.settings import Settings
from opskit.votecache import VoteCache, upvotes_key


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
        # A view whose oldest request is far older than max wait.
        conn.execute(
            "INSERT INTO mv_refresh_queue (view_name, refresh_requested_at) "
            "VALUES ('mv_chain_posts', now() - interval '1 hour')"
        )
    # Altered Redis keys: a member added, a member removed; a deleted key is "not cached".
    plain.sadd(upvotes_key(redis_prefix, cached[0]), 999_999)
    plain.srem(
        upvotes_key(redis_prefix, cached[1]), *plain.smembers(upvotes_key(redis_prefix, cached[1]))
    )
    plain.sadd(upvotes_key(redis_prefix, cached[1]), 999_998)
    plain.delete(upvotes_key(redis_prefix, cached[2]))

    found = run("--json")
    assert found.exit_code == 1
    drift = {name: check["drift"] for name, check in _checks(_report(found)).items()}
    assert drift == {
        "user_dashboard_stats": 3 + 4,
        "message_conversations_denorm": 3,
        "intro_request_stats": 1,
        "redis_upvotes": 2,
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
        ).fetchone()[0] == [14, 14, 0]


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
