"""The answer cache's bookkeeping, without a server: the listening connection is assumed up."""

from __future__ import annotations

import asyncio

import pytest

from opskit.app.answercache import EVERY_VIEW, AnswerCache


def _listening_cache(**kwargs) -> AnswerCache:
    cache = AnswerCache(None, ttl_s=60.0, **kwargs)
    cache.listening = True
    return cache


def _counting(body: bytes, calls: list, gate: asyncio.Event | None = None):
    async def compute() -> bytes:
        calls.append(body)
        if gate is not None:
            await gate.wait()
        return body

    return compute


def test_an_answer_is_kept_until_a_view_it_read_changes():
    async def scenario():
        cache, calls = _listening_cache(), []
        for _ in range(3):
            assert await cache.answer("a", ("v1", "v2"), _counting(b"1", calls)) == b"1"
        assert await cache.answer("b", ("v3",), _counting(b"2", calls)) == b"2"
        assert calls == [b"1", b"2"] and cache.hits == 2
        cache.invalidate("v2")
        assert await cache.answer("a", ("v1", "v2"), _counting(b"3", calls)) == b"3"
        assert await cache.answer("b", ("v3",), _counting(b"x", calls)) == b"2"  # not v2's
        cache.invalidate(EVERY_VIEW)
        assert await cache.answer("b", ("v3",), _counting(b"4", calls)) == b"4"

    asyncio.run(scenario())


def test_an_answer_read_before_a_notification_is_not_kept():
    """The query's snapshot may predate the change the notification announced."""

    async def scenario():
        cache, calls, gate = _listening_cache(), [], asyncio.Event()
        pending = asyncio.create_task(cache.answer("a", ("v",), _counting(b"old", calls, gate)))
        await asyncio.sleep(0)
        cache.invalidate("v")  # arrives while the query runs
        gate.set()
        assert await pending == b"old"  # the request that asked gets it
        assert await cache.answer("a", ("v",), _counting(b"new", calls)) == b"new"

    asyncio.run(scenario())


def test_concurrent_misses_share_one_query_and_later_ones_do_not_after_a_change():
    async def scenario():
        cache, calls, gate = _listening_cache(), [], asyncio.Event()
        first = [
            asyncio.create_task(cache.answer("a", ("v",), _counting(b"1", calls, gate)))
            for _ in range(5)
        ]
        await asyncio.sleep(0)
        cache.invalidate("v")
        later = asyncio.create_task(cache.answer("a", ("v",), _counting(b"2", calls)))
        gate.set()
        assert await asyncio.gather(*first) == [b"1"] * 5
        assert await later == b"2"
        assert calls == [b"1", b"2"] and cache.joined == 4

    asyncio.run(scenario())


def test_errors_are_not_kept_and_reach_every_waiter():
    async def scenario():
        cache, gate = _listening_cache(), asyncio.Event()

        async def failing() -> bytes:
            await gate.wait()
            raise LookupError("no project 7")

        waiters = [asyncio.create_task(cache.answer("p7", ("v",), failing)) for _ in range(3)]
        await asyncio.sleep(0)
        gate.set()
        for waiter in waiters:
            with pytest.raises(LookupError):
                await waiter
        assert cache.stats()["entries"] == 0

    asyncio.run(scenario())


def test_nothing_is_cached_while_not_listening_and_the_oldest_go_beyond_the_budget():
    async def scenario():
        cache, calls = AnswerCache(None, ttl_s=60.0), []
        await cache.answer("a", ("v",), _counting(b"1", calls))
        await cache.answer("a", ("v",), _counting(b"1", calls))
        assert len(calls) == 2 and cache.stats()["entries"] == 0
        cache = _listening_cache(max_bytes=10)
        for key in "abc":
            await cache.answer(key, ("v",), _counting(b"12345", calls))
        assert cache.stats()["entries"] == 2 and cache.stats()["bytes"] == 10
        await cache.answer("a", ("v",), _counting(b"again", calls))
        assert calls[-1] == b"again"  # "a" was the oldest: dropped

    asyncio.run(scenario())
