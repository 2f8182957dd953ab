"""The Redis vote cache (docs/interface.md §8): which projects each user has upvoted.

The database is the truth. Key `{prefix}user:{id}:upvotes` is a set of project ids; a missing
key means "not cached" (never "no upvotes"), so a user without upvotes is simply never cached.
Votes are applied after commit with idempotent SADD/SREM, and only to a key that exists: a
partial set is never created. A missing key is rebuilt from the database in a temp key and
RENAMEd over it.

The rebuild race: a rebuild that read the database before a vote committed, and RENAMEs after the
vote's SADD was skipped (no key yet), would lose that vote. Every vote therefore also INCRs a
per-user version key (`...:upvotes:version`), and the RENAME is a Lua script that only runs when
the version is still the one read before the database read; otherwise the temp key is dropped and
the next read rebuilds again. (A FLUSHALL between the two version reads can still defeat this;
the nightly reconcile heals that.)

Redis failures never fail a request: reads fall back to the database, writes are skipped, the
failure is counted and logged. A user whose vote missed Redis has their set deleted as soon as
Redis answers again (in this process); anything else is healed by the next reconcile.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

import psycopg
import redis
import redis.asyncio
from redis.backoff import NoBackoff

from opskit.sql import queries

log = logging.getLogger(__name__)

REDIS_TIMEOUT_S = 0.05  # reads/writes to Redis give up after 50 ms and fall back
VERSION_TTL_S = 3600  # a version only has to outlive one rebuild (milliseconds)
TEMP_KEY_TTL_S = 60  # a temp key left by a crashed rebuild goes away on its own
# A rebuilt set expires: votes written outside the API (a script, a manual fix) reach the cache
# within this long, without waiting for the nightly reconcile.
CACHED_SET_TTL_S = 300

# KEYS: set, version. ARGV: 'up' | 'down' | 'none', project id.
RECORD_VOTE_LUA = """
redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[3])
if redis.call('EXISTS', KEYS[1]) == 1 then
    if ARGV[1] == 'up' then
        redis.call('SADD', KEYS[1], ARGV[2])
    else
        redis.call('SREM', KEYS[1], ARGV[2])
    end
end
return 1
"""

# KEYS: set, version, temp. ARGV: the version read before the database read ('' = none), the
# set's lifetime in seconds. Installs the temp set as the key (no temp set: the user has no
# upvotes, the key goes away); RENAME would keep the temp key's short TTL, so it is set anew.
INSTALL_IF_UNCHANGED_LUA = """
if (redis.call('GET', KEYS[2]) or '') ~= ARGV[1] then
    redis.call('DEL', KEYS[3])
    return 0
end
if redis.call('EXISTS', KEYS[3]) == 1 then
    redis.call('RENAME', KEYS[3], KEYS[1])
    redis.call('EXPIRE', KEYS[1], ARGV[2])
else
    redis.call('DEL', KEYS[1])
end
return 1
"""

# KEYS: set, version. ARGV: project ids. {1, membership flags} when the set exists, else
# {0, the version (false: none)}: one atomic round trip; MULTI/EXEC of the three commands took
# ~40 µs longer (200 vs 160 µs per read, redis-py asyncio with hiredis).
READ_UPVOTED_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then
    return {1, redis.call('SMISMEMBER', KEYS[1], unpack(ARGV))}
end
return {0, redis.call('GET', KEYS[2])}
"""

VOTE_TYPES = ("up", "down", "none")


@dataclass(frozen=True)
class CacheRead:
    """What Redis said of some projects: `upvoted` is None when the database must answer;
    `version` is the missing set's version (for its rebuild), None when it need not be rebuilt."""

    upvoted: set[int] | None
    version: str | None


def upvotes_key(prefix: str, user_id: int) -> str:
    return f"{prefix}user:{user_id}:upvotes"


def upvotes_key_pattern(prefix: str) -> str:
    """The SCAN pattern of every cached set (version and temp keys do not match it)."""
    return f"{prefix}user:*:upvotes"


def user_of_key(prefix: str, key: str) -> int | None:
    """The user id in a cached set's key, or None for a key that is not one of ours."""
    middle = key.removeprefix(f"{prefix}user:").removesuffix(":upvotes")
    return int(middle) if middle.isdigit() and key == upvotes_key(prefix, int(middle)) else None


def _version_key(prefix: str, user_id: int) -> str:
    return f"{upvotes_key(prefix, user_id)}:version"


def _temp_key(prefix: str, user_id: int) -> str:
    return f"{upvotes_key(prefix, user_id)}:rebuild:{uuid.uuid4().hex}"


def _decode_version(raw: bytes | None) -> str:
    return raw.decode() if raw is not None else ""


def redis_async_client(url: str, timeout_s: float = REDIS_TIMEOUT_S) -> redis.asyncio.Redis:
    """An asyncio client whose connects and reads give up after `timeout_s`, never retried."""
    return redis.asyncio.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=redis.asyncio.retry.Retry(NoBackoff(), 0),
    )


class VoteCache:
    """Async vote cache for the API (redis.asyncio client + psycopg AsyncConnection)."""

    def __init__(
        self, client: redis.asyncio.Redis, prefix: str, timeout_s: float = REDIS_TIMEOUT_S
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.timeout_s = timeout_s  # each Redis interaction gives up after this long
        self.failures = 0  # Redis errors/timeouts seen so far
        self._failing = False
        self._unapplied: set[int] = set()  # users whose vote missed Redis: their set is stale
        self._record_vote = client.register_script(RECORD_VOTE_LUA)
        self._install_if_unchanged = client.register_script(INSTALL_IF_UNCHANGED_LUA)
        self._read_upvoted = client.register_script(READ_UPVOTED_LUA)

    async def upvoted_among(
        self, conn: psycopg.AsyncConnection, user_id: int, project_ids: list[int]
    ) -> set[int]:
        """Which of project_ids the user has upvoted: `read`, then `resolve` what it left open."""
        return await self.resolve(conn, user_id, project_ids, await self.read(user_id, project_ids))

    async def read(self, user_id: int, project_ids: list[int]) -> CacheRead:
        """Redis only (one EVALSHA round trip), so callers can run it beside a database query.

        Never raises for Redis trouble: an error, a timeout or a user whose vote missed Redis
        leaves the answer open (`upvoted` None) for `resolve` to take from the database.
        """
        if not project_ids:
            return CacheRead(set(), None)
        await self._forget_unapplied()
        if user_id in self._unapplied:  # their set is stale: the database answers
            return CacheRead(None, None)
        keys = [upvotes_key(self.prefix, user_id), _version_key(self.prefix, user_id)]
        try:
            async with asyncio.timeout(self.timeout_s):
                exists, answer = await self._read_upvoted(keys=keys, args=project_ids)
        except (redis.RedisError, TimeoutError) as err:
            self._failed("read", err)
            return CacheRead(None, None)
        self._succeeded()
        if exists:
            members = zip(project_ids, answer, strict=True)
            return CacheRead({pid for pid, member in members if member}, None)
        return CacheRead(None, _decode_version(answer))

    async def resolve(
        self, conn: psycopg.AsyncConnection, user_id: int, project_ids: list[int], cached: CacheRead
    ) -> set[int]:
        """The answer of `read`, or else the database's; a missing set is rebuilt from it
        atomically (temp key + RENAME, only if no vote bumped the version meanwhile)."""
        if cached.upvoted is not None:
            return cached.upvoted
        cursor = await conn.execute(
            queries("votecache.sql")["upvoted_projects_of_user"], {"user_id": user_id}
        )
        upvoted = {row[0] for row in await cursor.fetchall()}
        if cached.version is not None and upvoted:
            await self._install(user_id, cached.version, upvoted)
        return upvoted & set(project_ids)

    async def record_vote(self, user_id: int, project_id: int, vote_type: str) -> None:
        """After the vote committed: SADD ('up') / SREM ('down', 'none') when the key exists.

        Idempotent; never creates a partial key; Redis errors are counted, logged and swallowed,
        and the user's set is dropped once Redis answers again.
        """
        if vote_type not in VOTE_TYPES:
            raise ValueError(f"vote_type must be one of {VOTE_TYPES}, not {vote_type!r}")
        await self._forget_unapplied()
        keys = [upvotes_key(self.prefix, user_id), _version_key(self.prefix, user_id)]
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._record_vote(keys=keys, args=[vote_type, project_id, VERSION_TTL_S])
            self._succeeded()
        except (redis.RedisError, TimeoutError) as err:
            self._unapplied.add(user_id)
            self._failed("write", err)

    async def _forget_unapplied(self) -> None:
        """Once Redis answers again, drop the sets of users whose vote missed it.

        Their next read rebuilds them from the database; the version bump stops a rebuild that
        started earlier from installing. Until then reads of those users skip Redis.
        """
        if not self._unapplied:
            return
        users = list(self._unapplied)
        try:
            async with asyncio.timeout(self.timeout_s):
                async with self.client.pipeline(transaction=False) as pipe:
                    for user_id in users:
                        pipe.delete(upvotes_key(self.prefix, user_id))
                        pipe.incr(_version_key(self.prefix, user_id))
                        pipe.expire(_version_key(self.prefix, user_id), VERSION_TTL_S)
                    await pipe.execute()
        except (redis.RedisError, TimeoutError) as err:
            self._failed("invalidate", err)
            return
        self._unapplied.difference_update(users)
        self._succeeded()
        log.info("vote cache: dropped %d sets that missed a vote while Redis failed", len(users))

    async def _install(self, user_id: int, version: str, project_ids: set[int]) -> None:
        temp = _temp_key(self.prefix, user_id)
        keys = [upvotes_key(self.prefix, user_id), _version_key(self.prefix, user_id), temp]
        try:
            async with asyncio.timeout(self.timeout_s):
                async with self.client.pipeline(transaction=False) as pipe:
                    pipe.sadd(temp, *project_ids)
                    pipe.expire(temp, TEMP_KEY_TTL_S)
                    await pipe.execute()
                await self._install_if_unchanged(keys=keys, args=[version, CACHED_SET_TTL_S])
            self._succeeded()
        except (redis.RedisError, TimeoutError) as err:
            self._failed("rebuild", err)

    def _succeeded(self) -> None:
        if self._failing:
            self._failing = False
            log.info("vote cache: Redis answers again (%d failures so far)", self.failures)

    def _failed(self, operation: str, err: BaseException) -> None:
        self.failures += 1
        # One warning when Redis starts failing, not one per request while it is down.
        level = logging.DEBUG if self._failing else logging.WARNING
        self._failing = True
        log.log(
            level,
            "vote cache %s failed, using the database (%d failures so far): %s",
            operation,
            self.failures,
            err or type(err).__name__,
        )


# ---------------------------------------------------------------------------- sync side (reconcile)


def cached_sets(
    client: redis.Redis, prefix: str, batch: int = 1000
) -> Iterable[dict[int, set[int] | None]]:
    """Every cached set, in batches of {user_id: project ids}, read by SCAN + pipelined SMEMBERS.

    A key that holds no set of project ids (another type, a non-integer member) maps to None.
    """
    keys = client.scan_iter(match=upvotes_key_pattern(prefix), count=batch)
    pending: list[int] = []
    for key in keys:
        user_id = user_of_key(prefix, key.decode())
        if user_id is not None:
            pending.append(user_id)
        if len(pending) >= batch:
            yield _members(client, prefix, pending)
            pending = []
    if pending:
        yield _members(client, prefix, pending)


def _members(client: redis.Redis, prefix: str, user_ids: list[int]) -> dict[int, set[int] | None]:
    pipe = client.pipeline(transaction=False)
    for user_id in user_ids:
        pipe.smembers(upvotes_key(prefix, user_id))
    replies = pipe.execute(raise_on_error=False)
    return {user_id: parse_members(reply) for user_id, reply in zip(user_ids, replies, strict=True)}


def parse_members(reply) -> set[int] | None:
    """A SMEMBERS reply as project ids; None when the key is no set of integers (drift)."""
    if isinstance(reply, Exception):  # WRONGTYPE: something other than a set under the key
        return None
    try:
        return {int(member) for member in reply}
    except ValueError:
        return None


def upvoted_projects(conn: psycopg.Connection, user_ids: list[int]) -> dict[int, set[int]]:
    """The truth for a batch of users, in one query (users without upvotes map to an empty set)."""
    truth: dict[int, set[int]] = {user_id: set() for user_id in user_ids}
    rows = conn.execute(
        queries("votecache.sql")["upvoted_projects_of_users"], {"user_ids": user_ids}
    )
    for user_id, project_ids in rows:
        truth[user_id] = set(project_ids)
    return truth


def rebuild_users(
    client: redis.Redis, conn: psycopg.Connection, prefix: str, user_ids: list[int]
) -> list[int]:
    """Rebuild the cached sets of user_ids from the database; return the users rebuilt.

    A user whose vote landed during the rebuild is left out (their version changed); the caller
    may try again.
    """
    if not user_ids:
        return []
    versions = [
        _decode_version(raw) for raw in client.mget([_version_key(prefix, u) for u in user_ids])
    ]
    truth = upvoted_projects(conn, user_ids)
    install = client.register_script(INSTALL_IF_UNCHANGED_LUA)
    pipe = client.pipeline(transaction=False)
    install_positions = []
    for user_id, version in zip(user_ids, versions, strict=True):
        temp = _temp_key(prefix, user_id)
        if truth[user_id]:
            pipe.sadd(temp, *truth[user_id])
            pipe.expire(temp, TEMP_KEY_TTL_S)
        install_positions.append(len(pipe))
        install(
            keys=[upvotes_key(prefix, user_id), _version_key(prefix, user_id), temp],
            args=[version, CACHED_SET_TTL_S],
            client=pipe,
        )
    results = pipe.execute()
    return [u for u, at in zip(user_ids, install_positions, strict=True) if results[at] == 1]
