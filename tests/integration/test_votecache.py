"""The Redis vote cache on real PostgreSQL and Redis servers (docs/interface.md §8)."""

import asyncio
import contextlib
import socket
import threading
from urllib.parse import urlsplit

import psycopg
import pytest
import redis

from opskit.engine import votecache
from opskit.engine.votecache import VoteCache, upvotes_key


def _truth(conn, user_id):
    return {
        row[0]
        for row in conn.execute(
            "SELECT project_id FROM votes WHERE user_id = %s AND vote_type = 'up'", (user_id,)
        )
    }


def _voter_and_projects(url):
    """A user with upvotes, and project ids mixing ones they upvoted and ones they did not."""
    with psycopg.connect(url) as conn:
        user_id = conn.execute(
            "SELECT user_id FROM votes WHERE vote_type = 'up' "
            "GROUP BY user_id ORDER BY count(*) DESC, user_id LIMIT 1"
        ).fetchone()[0]
        upvoted = sorted(_truth(conn, user_id))
        others = [
            row[0]
            for row in conn.execute(
                "SELECT id FROM projects WHERE id <> ALL(%s) ORDER BY id LIMIT 5", (upvoted,)
            )
        ]
    return user_id, upvoted, others


def _members(redis_url, key):
    return {int(m) for m in redis.Redis.from_url(redis_url).smembers(key)}


# Tests of the Redis path allow slow answers (a busy machine); the fallback tests keep 50 ms.
PATIENT_S = 2.0


async def _with_cache(url, redis_url, prefix, work, timeout_s=PATIENT_S):
    client = votecache.redis_async_client(redis_url, timeout_s)
    try:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            return await work(VoteCache(client, prefix, timeout_s), conn)
    finally:
        await client.aclose()


def test_key_name_follows_the_contract():
    assert upvotes_key("opskit:", 42) == "opskit:user:42:upvotes"
    assert votecache.user_of_key("opskit:", "opskit:user:42:upvotes") == 42
    assert votecache.user_of_key("opskit:", "opskit:user:42:upvotes:version") is None


def test_a_cold_key_is_rebuilt_from_the_database_then_answers_from_redis(
    tiny_db_url, redis_url, redis_prefix
):
    user_id, upvoted, others = _voter_and_projects(tiny_db_url)
    asked = upvoted[:3] + others
    key = upvotes_key(redis_prefix, user_id)

    async def work(cache, conn):
        first = await cache.upvoted_among(conn, user_id, asked)
        # Prove the second answer comes from Redis: change the cached set behind its back.
        redis.Redis.from_url(redis_url).srem(key, upvoted[0])
        second = await cache.upvoted_among(conn, user_id, asked)
        return first, second, cache.failures

    first, second, failures = asyncio.run(_with_cache(tiny_db_url, redis_url, redis_prefix, work))
    assert first == set(upvoted[:3])
    assert second == set(upvoted[1:3])
    assert failures == 0
    assert _members(redis_url, key) == set(upvoted) - {upvoted[0]}
    _assert_lives_as_a_cached_set(redis_url, key)


def _assert_lives_as_a_cached_set(redis_url, key):
    """A rebuilt set expires after CACHED_SET_TTL_S, not with its temp key's short TTL."""
    ttl = redis.Redis.from_url(redis_url).ttl(key)
    assert votecache.TEMP_KEY_TTL_S < ttl <= votecache.CACHED_SET_TTL_S, ttl


def test_record_vote_updates_an_existing_key_and_never_creates_one(
    tiny_db_url, redis_url, redis_prefix
):
    user_id, upvoted, others = _voter_and_projects(tiny_db_url)
    key = upvotes_key(redis_prefix, user_id)
    plain = redis.Redis.from_url(redis_url)

    async def work(cache, conn):
        await cache.record_vote(user_id, others[0], "up")
        created_by_vote = plain.exists(key)
        await cache.upvoted_among(conn, user_id, others)  # builds the key
        await cache.record_vote(user_id, others[0], "up")
        await cache.record_vote(user_id, others[0], "up")  # idempotent
        after_up = _members(redis_url, key)
        await cache.record_vote(user_id, upvoted[0], "down")
        await cache.record_vote(user_id, upvoted[1], "none")
        return created_by_vote, after_up

    created_by_vote, after_up = asyncio.run(_with_cache(tiny_db_url, redis_url, redis_prefix, work))
    assert not created_by_vote
    assert after_up == set(upvoted) | {others[0]}
    assert _members(redis_url, key) == (set(upvoted) | {others[0]}) - set(upvoted[:2])


def test_a_rebuild_that_read_the_database_before_a_vote_does_not_install(
    tiny_db_url, redis_url, redis_prefix
):
    user_id, upvoted, others = _voter_and_projects(tiny_db_url)
    key = upvotes_key(redis_prefix, user_id)

    async def work(cache, conn):
        version_before = (await cache.client.get(f"{key}:version") or b"").decode()
        # The vote commits and is recorded while the key is missing (only its version moves) ...
        await conn.execute("INSERT INTO votes VALUES (%s, %s, 'up')", (user_id, others[0]))
        await cache.record_vote(user_id, others[0], "up")
        # ... so the rebuild that read the database before it must not install its stale set.
        await cache._install(user_id, version_before, set(upvoted))
        stale_installed = await cache.client.exists(key)
        answer = await cache.upvoted_among(conn, user_id, [others[0]])
        return stale_installed, answer

    stale_installed, answer = asyncio.run(_with_cache(tiny_db_url, redis_url, redis_prefix, work))
    assert not stale_installed
    assert answer == {others[0]}
    assert _members(redis_url, key) == set(upvoted) | {others[0]}
    assert not list(redis.Redis.from_url(redis_url).scan_iter(match=f"{key}:rebuild:*"))


@contextlib.contextmanager
def _silent_server():
    """A TCP server that accepts connections and never answers: a Redis that hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                accepted.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        listener.close()


def _closed_port_url():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"redis://127.0.0.1:{probe.getsockname()[1]}/0"


@pytest.mark.parametrize("kind", ["down", "hanging"])
def test_redis_down_or_hanging_falls_back_to_the_database(tiny_db_url, redis_prefix, kind):
    user_id, upvoted, others = _voter_and_projects(tiny_db_url)

    async def work(cache, conn):
        answer = await cache.upvoted_among(conn, user_id, upvoted[:2] + others[:2])
        await conn.execute("INSERT INTO votes VALUES (%s, %s, 'up')", (user_id, others[0]))
        await cache.record_vote(user_id, others[0], "up")  # swallowed, counted
        return answer, cache.failures

    with contextlib.ExitStack() as stack:
        url = _closed_port_url() if kind == "down" else stack.enter_context(_silent_server())
        answer, failures = asyncio.run(
            _with_cache(tiny_db_url, url, redis_prefix, work, votecache.REDIS_TIMEOUT_S)
        )
    assert answer == set(upvoted[:2])
    assert failures == 2


def test_sync_rebuild_replaces_a_drifted_key_and_drops_one_without_upvotes(
    tiny_db_url, redis_url, redis_prefix
):
    user_id, upvoted, others = _voter_and_projects(tiny_db_url)
    client = redis.Redis.from_url(redis_url)
    with psycopg.connect(tiny_db_url) as conn:
        idle = conn.execute(
            "INSERT INTO users (username, display_name, email, role) "
            "VALUES ('idle', 'Idle', 'idle@example.com', 'builder') RETURNING id"
        ).fetchone()[0]
        client.sadd(upvotes_key(redis_prefix, user_id), *others)
        client.sadd(upvotes_key(redis_prefix, idle), others[0])
        rebuilt = votecache.rebuild_users(client, conn, redis_prefix, [user_id, idle])
    assert rebuilt == [user_id, idle]
    assert _members(redis_url, upvotes_key(redis_prefix, user_id)) == set(upvoted)
    _assert_lives_as_a_cached_set(redis_url, upvotes_key(redis_prefix, user_id))
    assert not client.exists(upvotes_key(redis_prefix, idle))


class _StoppableRedis:
    """A TCP proxy in front of the real Redis that can be stopped and started on the same port."""

    def __init__(self, redis_url):
        parts = urlsplit(redis_url)
        self.target = (parts.hostname, parts.port or 6379)
        self.database = parts.path or "/0"
        self.port = 0
        self.server = None
        self.writers = []

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}{self.database}"

    async def start(self):
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self):
        self.server.close()
        for writer in self.writers:
            writer.close()
        self.writers = []
        await self.server.wait_closed()

    async def _serve(self, client_reader, client_writer):
        upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        self.writers += [client_writer, upstream_writer]

        async def pipe(reader, writer):
            with contextlib.suppress(ConnectionError, OSError):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            writer.close()

        await asyncio.gather(
            pipe(client_reader, upstream_writer), pipe(upstream_reader, client_writer)
        )


def test_redis_stopped_mid_run_writes_succeed_reads_fall_back_and_the_stale_set_is_dropped(
    tiny_db_url, redis_url, redis_prefix
):
    user_id, upvoted, others = _voter_and_projects(tiny_db_url)
    key = upvotes_key(redis_prefix, user_id)

    async def scenario():
        redis_server = _StoppableRedis(redis_url)
        await redis_server.start()
        client = votecache.redis_async_client(redis_server.url, PATIENT_S)
        cache = VoteCache(client, redis_prefix, PATIENT_S)
        async with await psycopg.AsyncConnection.connect(tiny_db_url, autocommit=True) as conn:
            await cache.upvoted_among(conn, user_id, others)  # the set is cached
            await redis_server.stop()
            await conn.execute("INSERT INTO votes VALUES (%s, %s, 'up')", (user_id, others[0]))
            await cache.record_vote(user_id, others[0], "up")  # Redis is down: swallowed
            while_down = await cache.upvoted_among(conn, user_id, others[:2])
            failures_while_down = cache.failures
            stale_members = _members(redis_url, key)  # the cached set missed the vote
            await redis_server.start()
            after = [await cache.upvoted_among(conn, user_id, others[:2]) for _ in range(3)]
        await client.aclose()
        await redis_server.stop()
        return while_down, failures_while_down, stale_members, after

    while_down, failures, stale_members, after = asyncio.run(scenario())
    assert while_down == {others[0]}  # from the database
    assert failures >= 2
    assert others[0] not in stale_members
    assert after == [{others[0]}] * 3
    assert _members(redis_url, key) == set(upvoted) | {others[0]}  # rebuilt, not stale
