"""After mode's answer cache: anonymous answers of the hot pages, kept per API worker process
until a view they read changes (docs/capacity.md, "The answer cache").

An anonymous GET of the feed, a project page, the leaderboards, chains, a chain's posts, search
or the investor directory reads only the views of docs/interface.md §7, and every worker would
compute the same JSON for it until the daemon applies its next batch to one of those views. So
each worker keeps the encoded answer (the JSON bytes) under its parsed request (route and
validated parameters) and drops it as soon as a view it read changes:

- every transaction that changes a view's rows (a batch, a full build, trending's re-scoring)
  sends `NOTIFY opskit_views, '<view>'` (PostgreSQL delivers it when, and only if, that
  transaction commits);
- each worker LISTENs on one connection of its own and drops the answers of the views named;
- an answer computed from a snapshot older than a notification that arrived meanwhile is not
  kept (a generation per view, read before the query and compared after it);
- while the listening connection is down nothing is cached or served from the cache, and the
  cache starts empty each time it is up again;
- the time-to-live (`opskit serve --answer-cache`, default 1 s) is only a safety net.

Concurrent misses of one answer wait for the one query in flight (no stampede after each
batch). Only 200 answers are kept; signed-in requests (`has_upvoted`, per-user data) never
reach the cache. Before mode has no cache: it is the baseline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass

import psycopg

from opskit.core.errors import first_line

log = logging.getLogger(__name__)

CHANNEL = "opskit_views"  # the daemon's notifications (docs/interface.md §7)
EVERY_VIEW = "*"  # a payload that drops every answer
APPLICATION_NAME = "opskit-answer-cache"  # the listening connections, in pg_stat_activity
DEFAULT_TTL_S = 1.0
MAX_BYTES = 64 * 1024 * 1024  # per worker: the oldest answers go first beyond this
# TCP keepalives find a listening connection whose server is gone, without sending queries on
# it (notifications are read only while it waits in `notifies()`): within about 11 s.
KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
}
RECONNECT_MAX_S = 10.0


@dataclass
class _Entry:
    body: bytes
    views: tuple[str, ...]
    expires_at: float


@dataclass
class _InFlight:
    answer: asyncio.Future
    views: tuple[str, ...]


class AnswerCache:
    """Encoded answers of one worker, keyed by request, dropped when their views change."""

    def __init__(
        self, database_url: str | None, ttl_s: float = DEFAULT_TTL_S, max_bytes: int = MAX_BYTES
    ) -> None:
        self.database_url = database_url
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self.listening = False  # answers are cached and served only while this is true
        self.hits = self.misses = self.joined = self.dropped = 0
        self._entries: dict[Hashable, _Entry] = {}
        self._by_view: dict[str, set[Hashable]] = {}
        self._generation: dict[str, int] = {}
        self._in_flight: dict[Hashable, _InFlight] = {}
        self._bytes = 0
        self._listener: asyncio.Task | None = None
        self._ready: asyncio.Event | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self, wait_s: float = 10.0) -> None:
        """Start listening (in a task that reconnects); wait up to `wait_s` for the first LISTEN.

        The API answers either way: without a listening connection it just does not cache.
        """
        self._ready = asyncio.Event()
        self._listener = asyncio.create_task(self._listen(), name="opskit-answer-cache")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), wait_s)

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        self._stop_serving()

    async def _listen(self) -> None:
        delay = 0.2
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.database_url,
                    autocommit=True,
                    application_name=APPLICATION_NAME,
                    **KEEPALIVES,
                )
                async with conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self._clear()
                    self.listening = True
                    self._ready.set()
                    delay = 0.2
                    async for notify in conn.notifies():  # until the connection fails
                        self.invalidate(notify.payload)
            except Exception as err:  # noqa: BLE001 (the API answers on without the cache)
                log.warning("answer cache off until its LISTEN is back: %s", first_line(err))
            finally:
                self._stop_serving()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_S)

    def _stop_serving(self) -> None:
        self.listening = False
        self._clear()

    # ------------------------------------------------------------------ invalidation

    def invalidate(self, view: str) -> None:
        """Drop the answers that read `view` (every answer for EVERY_VIEW)."""
        if view == EVERY_VIEW:
            self._clear()
            return
        self._generation[view] = self._generation.get(view, 0) + 1
        for key in self._by_view.pop(view, ()):
            self._drop(key)
        for key in [k for k, flight in self._in_flight.items() if view in flight.views]:
            del self._in_flight[key]  # its waiters get its answer; later requests query again

    def _clear(self) -> None:
        for name in list(self._generation):
            self._generation[name] += 1
        self._entries.clear()
        self._by_view.clear()
        self._in_flight.clear()
        self._bytes = 0

    def _drop(self, key: Hashable) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        self._bytes -= len(entry.body)
        self.dropped += 1
        for name in entry.views:
            keys = self._by_view.get(name)
            if keys is not None:
                keys.discard(key)

    # ------------------------------------------------------------------ answers

    async def answer(
        self, key: Hashable, views: tuple[str, ...], compute: Callable[[], Awaitable[bytes]]
    ) -> bytes:
        """The encoded answer for `key`: from the cache, from the query in flight, or computed.

        `views` are the relations `compute` reads. An exception (a 404, ...) is never cached.
        """
        if not self.listening:
            return await compute()
        entry = self._entries.get(key)
        if entry is not None:
            if entry.expires_at > time.monotonic():
                self.hits += 1
                return entry.body
            self._drop(key)
        in_flight = self._in_flight.get(key)
        if in_flight is not None:
            self.joined += 1
            try:
                return await asyncio.shield(in_flight.answer)
            except asyncio.CancelledError:
                if not in_flight.answer.cancelled():
                    raise  # this request was cancelled
                return await compute()  # the query it waited for was
        self.misses += 1
        return await self._compute(key, views, compute)

    async def _compute(
        self, key: Hashable, views: tuple[str, ...], compute: Callable[[], Awaitable[bytes]]
    ) -> bytes:
        generations = tuple(self._generation.setdefault(name, 0) for name in views)
        answer = asyncio.get_running_loop().create_future()
        flight = _InFlight(answer, views)
        self._in_flight[key] = flight
        try:
            body = await compute()
        except BaseException as err:
            if isinstance(err, Exception):
                answer.set_exception(err)
                answer.exception()  # retrieved: no "never retrieved" warning without waiters
            else:
                answer.cancel()
            raise
        finally:
            if self._in_flight.get(key) is flight:
                del self._in_flight[key]
        answer.set_result(body)
        unchanged = generations == tuple(self._generation.get(name, 0) for name in views)
        if self.listening and unchanged:
            self._store(key, views, body)
        return body

    def _store(self, key: Hashable, views: tuple[str, ...], body: bytes) -> None:
        self._drop(key)
        self._entries[key] = _Entry(body, views, time.monotonic() + self.ttl_s)
        self._bytes += len(body)
        for name in views:
            self._by_view.setdefault(name, set()).add(key)
        while self._bytes > self.max_bytes and self._entries:
            self._drop(next(iter(self._entries)))  # the oldest stored first

    def stats(self) -> dict[str, int | bool]:
        return {
            "listening": self.listening,
            "entries": len(self._entries),
            "bytes": self._bytes,
            "hits": self.hits,
            "misses": self.misses,
            "joined": self.joined,
            "dropped": self.dropped,
        }
