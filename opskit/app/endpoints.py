"""The API's query layer: each endpoint's data, in `before` or `after` mode (docs/interface.md §9).

Every read names a pair of blocks in `opskit/sql/endpoints.sql`, `<name>_before` (normalized
tables, the joins an app would write) and `<name>_after` (denormalized relations, materialized
views), that return the same columns; `Endpoints(mode)` picks one side. In Python only three reads
differ: `has_upvoted` (after mode asks the Redis vote cache), trending (after mode reads the
scores its last refresh stored, or for an explicit as_of ranks only the recent and high-score
projects that can reach the page) and search (after mode looks the query's words up in the
word index, then reads only the postings that can reach the page); each SQL block states why
its answer is the same. Writes are the same
statements in both modes; after mode also updates the vote cache once the vote has committed.

Functions take an open psycopg AsyncConnection (autocommit) and return plain dicts and
lists; they raise `ApiError` for answers that are not 200 (not found, forbidden, conflict).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.rows import dict_row

from opskit.engine.votecache import VoteCache
from opskit.sql import queries

MODES = ("before", "after")

# Whitelisted orders. Each ends with a unique key so both modes return the same total order.
FEED_ORDERS = {
    "trending": "trending_score DESC, id DESC",
    "newest": "created_at DESC, id DESC",
    "top": "score DESC, id DESC",
}
# After mode's trending without as_of: the stored scores' column (qualified, so not the
# output's CASE), whose index serves the page.
STORED_TRENDING_ORDER = "mv_feed_projects.trending_score DESC, project_id DESC"

CHAIN_ORDERS = {
    "members": "members_count DESC, id",
    "activity": "last_activity_at DESC, id DESC",
    "newest": "created_at DESC, id DESC",
}


# How far the after-mode trending shortcut looks (see feed_trending_as_of_after).
TRENDING_RECENT_SCAN = 500

# Search: a query word matches a document word when their pg_trgm similarity reaches this
# (docs/search.md: one typo in a title word of 6+ letters keeps at least 3/11 = 0.27).
SEARCH_SIMILARITY_THRESHOLD = 0.25


# The views each anonymous read reads in after mode: its answer changes only when one of them
# does (the answer cache drops it then: opskit.app.answercache). Search's word index
# (search_words, search_postings) changes in mv_search_index's transactions.
AFTER_VIEWS = {
    "feed": ("mv_feed_projects",),
    "project": ("mv_project_details",),
    "leaderboard_projects": ("mv_leaderboard_projects",),
    "leaderboard_builders": ("mv_leaderboard_builders",),
    "chains": ("mv_chains_discovery",),
    "chain_posts": ("mv_chain_posts", "mv_chains_discovery"),
    "search": ("mv_search_index",),
    "investors": ("mv_investors_directory",),
}


class ApiError(Exception):
    """An answer other than 200: HTTP status and a one-line message for `{"error": ...}`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def user_gone() -> ApiError:
    """401 for a valid token whose user was deleted since it was minted."""
    return ApiError(401, "the token's user no longer exists")


@dataclass(frozen=True)
class Page:
    """A page of a list: the rows to skip and to return (one more is fetched for has_more)."""

    number: int
    size: int

    @property
    def offset(self) -> int:
        return (self.number - 1) * self.size

    def params(self) -> dict[str, int]:
        return {"limit": self.size + 1, "offset": self.offset}

    def envelope(self, rows: list[dict], **extra: Any) -> dict:
        return {
            "items": rows[: self.size],
            "page": self.number,
            "per_page": self.size,
            "has_more": len(rows) > self.size,
            **extra,
        }


def _sql(name: str) -> str:
    return queries("endpoints.sql")[name]


def _ordered(name: str, order_by: str) -> sql.Composed:
    """A block whose `{order_by}` is one of the whitelisted orders above (never request text)."""
    return sql.SQL(_sql(name)).format(order_by=sql.SQL(order_by))


async def _rows(conn: psycopg.AsyncConnection, query, params: dict) -> list[dict]:
    cursor = await conn.cursor(row_factory=dict_row).execute(query, params)
    return await cursor.fetchall()


async def _row(conn: psycopg.AsyncConnection, query, params: dict) -> dict | None:
    cursor = await conn.cursor(row_factory=dict_row).execute(query, params)
    return await cursor.fetchone()


async def _rows_for_viewer(
    conn: psycopg.AsyncConnection, viewer_id: int | None, query, params: dict
) -> list[dict]:
    """The query's rows; with a viewer, also checks that their user still exists (401 if not),
    in the same round trip (pipeline mode: about 100 µs less than two round trips)."""
    if viewer_id is None:
        return await _rows(conn, query, params)
    async with conn.pipeline():
        exists = await conn.cursor(row_factory=dict_row).execute(
            _sql("user_exists"), {"user_id": viewer_id}
        )
        rows = await conn.cursor(row_factory=dict_row).execute(query, params)
    if not (await exists.fetchone())["user_exists"]:
        raise user_gone()
    return await rows.fetchall()


def _mark(items: list[dict], upvoted: set[int]) -> None:
    for item in items:
        item["has_upvoted"] = item["id"] in upvoted


class Endpoints:
    """The data behind each route, for one mode."""

    def __init__(self, mode: str, vote_cache: VoteCache | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        if mode == "after" and vote_cache is None:
            raise ValueError("after mode needs the vote cache")
        self.mode = mode
        self.vote_cache = vote_cache

    def _q(self, name: str) -> str:
        return _sql(f"{name}_{self.mode}")

    # ---------------------------------------------------------------- auth

    async def user_exists(self, conn: psycopg.AsyncConnection, user_id: int) -> bool:
        row = await _row(conn, _sql("user_exists"), {"user_id": user_id})
        return bool(row and row["user_exists"])

    # ---------------------------------------------------------------- reads

    async def user_stats(self, conn: psycopg.AsyncConnection, user_id: int) -> dict | None:
        """The user's dashboard counters, or None when the user does not exist."""
        return await _row(conn, self._q("user_stats"), {"user_id": user_id})

    async def intro_stats(self, conn: psycopg.AsyncConnection, user_id: int) -> dict | None:
        """The user's intro request counters, or None when the user does not exist."""
        return await _row(conn, self._q("intro_stats"), {"user_id": user_id})

    async def feed(
        self,
        conn: psycopg.AsyncConnection,
        sort: str,
        as_of: datetime | None,
        page: Page,
        viewer_id: int | None,
    ) -> dict:
        """A page of the feed with trending scores for `as_of`; with a viewer, each item says
        whether they upvoted it (401 when the viewer's user is gone).

        Without `as_of`, before mode scores for now and after mode answers with the scores its
        last refresh stored (for mv_feed_projects.scored_at), or, while the daemon moves them to
        a new instant, ranks for the old one; the answer's as_of says which.
        """
        if self.mode == "before" and as_of is None:
            as_of = datetime.now(UTC)
        params = {"as_of": as_of, **page.params()}
        if self.mode == "after" and sort == "trending":
            if as_of is None:
                query = _ordered("feed_after", STORED_TRENDING_ORDER)
            else:
                query = _sql("feed_trending_as_of_after")
                params.update(recent_scan=TRENDING_RECENT_SCAN, wanted=page.offset + page.size + 1)
        else:
            query = _ordered(f"feed_{self.mode}", FEED_ORDERS[sort])
        rows = await _rows_for_viewer(conn, viewer_id, query, params)
        if self.mode == "after":
            moving_from = {row.pop("rescoring_from", None) for row in rows} - {None}
            if as_of is None and moving_from:  # the stored scores hold two instants: rank
                return await self.feed(conn, sort, moving_from.pop(), page, viewer_id)
            as_of = await self._after_as_of(conn, rows, as_of)
        response = page.envelope(rows, sort=sort, as_of=as_of)
        if viewer_id is not None:
            project_ids = [item["id"] for item in response["items"]]
            _mark(response["items"], await self._upvoted_among(conn, viewer_id, project_ids))
        return response

    @staticmethod
    async def _after_as_of(
        conn: psycopg.AsyncConnection, rows: list[dict], asked: datetime | None
    ) -> datetime:
        """After mode's as_of: the one asked for, else the instant of the stored trending scores
        (every row carries it as scored_at, taken off here)."""
        instants = [row.pop("scored_at") for row in rows]
        if asked is not None:
            return asked
        if instants:
            return instants[0]  # the same in every row: one refresh wrote them all
        row = await _row(conn, _sql("feed_scored_at_after"), {})  # a page past the end
        return row["scored_at"] if row else datetime.now(UTC)  # no project at all

    async def project(
        self, conn: psycopg.AsyncConnection, project_id: int, viewer_id: int | None
    ) -> dict:
        """One project's page; with a viewer, whether they upvoted it (401 when the viewer's
        user is gone, checked before the 404 of an unknown project)."""
        query, params = self._q("project"), {"project_id": project_id}
        if viewer_id is not None and self.vote_cache is not None:
            # The id is known up front: Redis answers while the database does.
            rows, cached = await asyncio.gather(
                _rows_for_viewer(conn, viewer_id, query, params),
                self.vote_cache.read(viewer_id, [project_id]),
            )
        else:
            rows, cached = await _rows_for_viewer(conn, viewer_id, query, params), None
        if not rows:
            raise ApiError(404, f"no project {project_id}")
        row = rows[0]
        if viewer_id is not None:
            if cached is not None:
                upvoted = await self.vote_cache.resolve(conn, viewer_id, [project_id], cached)
            else:
                upvoted = await self._upvoted_among(conn, viewer_id, [project_id])
            _mark([row], upvoted)
        return row

    async def _upvoted_among(
        self, conn: psycopg.AsyncConnection, user_id: int, project_ids: list[int]
    ) -> set[int]:
        if self.vote_cache is not None:
            return await self.vote_cache.upvoted_among(conn, user_id, project_ids)
        if not project_ids:
            return set()
        rows = await _rows(
            conn, _sql("upvoted_among_before"), {"user_id": user_id, "project_ids": project_ids}
        )
        return {row["project_id"] for row in rows}

    async def leaderboard_projects(self, conn: psycopg.AsyncConnection, page: Page) -> dict:
        return page.envelope(await _rows(conn, self._q("leaderboard_projects"), page.params()))

    async def leaderboard_builders(self, conn: psycopg.AsyncConnection, page: Page) -> dict:
        return page.envelope(await _rows(conn, self._q("leaderboard_builders"), page.params()))

    async def chains(self, conn: psycopg.AsyncConnection, sort: str, page: Page) -> dict:
        query = _ordered(f"chains_{self.mode}", CHAIN_ORDERS[sort])
        return page.envelope(await _rows(conn, query, page.params()), sort=sort)

    async def chain_posts(self, conn: psycopg.AsyncConnection, slug: str, page: Page) -> dict:
        rows = await _rows(conn, self._q("chain_posts"), {"slug": slug, **page.params()})
        if not rows:
            exists = await _row(conn, self._q("chain_exists"), {"slug": slug})
            if not exists["chain_exists"]:
                raise ApiError(404, f"no chain {slug!r}")
        return page.envelope(rows, chain=slug)

    async def search(self, conn: psycopg.AsyncConnection, q: str, page: Page) -> dict:
        params = {"q": q, "threshold": SEARCH_SIMILARITY_THRESHOLD}
        if self.mode == "before":
            try:
                rows = await _rows(conn, _sql("search_before"), {**params, **page.params()})
            except pg_errors.UndefinedFunction as err:  # a database without pg_trgm
                raise ApiError(503, "search needs the pg_trgm extension on the database") from err
            return page.envelope(rows, q=q)
        matches: dict[str, list[dict]] = {}
        for row in await _rows(conn, _sql("search_matches_after"), params):
            matches.setdefault(row.pop("query_word"), []).append(row)
        if not matches or any(found[0]["word"] is None for found in matches.values()):
            return page.envelope([], q=q)  # no query word, or one that matches no word
        wanted = page.offset + page.size + 1
        if len(matches) == 1:
            ((query_word, found),) = matches.items()
            params = {"query_word": query_word, "words": _kept(found, wanted), "wanted": wanted}
            rows = await _rows(conn, _sql("search_one_word_after"), {**params, **page.params()})
        else:
            pairs = [
                (query_word, m["word"]) for query_word, found in matches.items() for m in found
            ]
            params = {
                "query_words": [query_word for query_word, _ in pairs],
                "words": [word for _, word in pairs],
                "query_word_count": len(matches),
            }
            rows = await _rows(conn, _sql("search_all_words_after"), {**params, **page.params()})
        return page.envelope(rows, q=q)

    async def investors(self, conn: psycopg.AsyncConnection, page: Page) -> dict:
        return page.envelope(await _rows(conn, self._q("investors"), page.params()))

    async def conversations(self, conn: psycopg.AsyncConnection, user_id: int, page: Page) -> dict:
        """The user's conversations; ApiError 401 when the user does not exist.

        Deleting a user deletes their messages, so a non-empty page proves the user exists: only
        an empty one costs the extra lookup.
        """
        rows = await _rows(conn, self._q("conversations"), {"user_id": user_id, **page.params()})
        if not rows and not await self.user_exists(conn, user_id):
            raise user_gone()
        return page.envelope(rows)

    # ---------------------------------------------------------------- writes (both modes)

    async def vote(
        self, conn: psycopg.AsyncConnection, user_id: int, project_id: int, vote_type: str
    ) -> dict:
        """Cast ('up', 'down') or remove ('none') the user's vote; the project's new counts."""
        params = {"user_id": user_id, "project_id": project_id, "vote_type": vote_type}
        async with conn.transaction():
            check = await _row(conn, _sql("vote_check"), params)
            if not check["user_exists"]:
                raise user_gone()
            if not check["live"]:
                raise ApiError(404, f"no project {project_id}")
            if vote_type == "none":
                await conn.execute(_sql("vote_delete"), params)
            else:
                await conn.execute(_sql("vote_upsert"), params)
            counts = await _row(conn, self._q("project_vote_counts"), params)
        if self.vote_cache is not None:
            await self.vote_cache.record_vote(user_id, project_id, vote_type)
        return {
            "project_id": project_id,
            "vote_type": vote_type,
            "has_upvoted": vote_type == "up",
            "upvotes": counts["upvotes"],
            "downvotes": counts["downvotes"],
            "score": counts["upvotes"] - counts["downvotes"],
        }

    async def send_message(
        self, conn: psycopg.AsyncConnection, sender_id: int, recipient_id: int, body: str
    ) -> dict:
        params = {"sender_id": sender_id, "recipient_id": recipient_id, "body": body}
        try:
            return await _row(conn, _sql("message_insert"), params)
        except pg_errors.ForeignKeyViolation as err:
            raise _missing_user(err, recipient_id) from err

    async def mark_read(
        self, conn: psycopg.AsyncConnection, user_id: int, other_user_id: int
    ) -> dict:
        if not await self.user_exists(conn, other_user_id):
            raise ApiError(404, f"no user {other_user_id}")
        cursor = await conn.execute(
            _sql("messages_mark_read"), {"user_id": user_id, "other_user_id": other_user_id}
        )
        return {"other_user_id": other_user_id, "marked_read": cursor.rowcount}

    async def request_intro(
        self,
        conn: psycopg.AsyncConnection,
        requester_id: int,
        target_id: int,
        project_id: int | None,
        message: str | None,
    ) -> dict:
        params = {
            "requester_id": requester_id,
            "target_id": target_id,
            "project_id": project_id,
            "message": message,
        }
        try:
            return await _row(conn, _sql("intro_insert"), params)
        except pg_errors.ForeignKeyViolation as err:
            if err.diag.constraint_name == "intro_requests_project_id_fkey":
                raise ApiError(404, f"no project {project_id}") from err
            raise _missing_user(err, target_id) from err

    async def respond_intro(
        self, conn: psycopg.AsyncConnection, user_id: int, intro_id: int, status: str
    ) -> dict:
        params = {"user_id": user_id, "intro_id": intro_id, "status": status}
        row = await _row(conn, _sql("intro_respond"), params)
        if row is not None:
            return row
        current = await _row(conn, _sql("intro_target_and_status"), params)
        if current is None:
            raise ApiError(404, f"no intro request {intro_id}")
        if current["target_id"] != user_id:
            raise ApiError(403, f"intro request {intro_id} was not sent to you")
        raise ApiError(409, f"intro request {intro_id} is already {current['status']}")


def _kept(matches: list[dict], wanted: int) -> list[str]:
    """The matched words (best first) that can place a document among the first `wanted`.

    A word used by `wanted` or more documents fills that many places with documents at least
    as similar as itself, so the words less similar than the most similar such word cannot
    place one; ties are kept. Without such a word, every match may count.
    """
    cutoff = max((m["similarity"] for m in matches if m["documents"] >= wanted), default=0.0)
    return [m["word"] for m in matches if m["similarity"] >= cutoff]


def _missing_user(err: pg_errors.ForeignKeyViolation, other_user_id: int) -> ApiError:
    """A foreign key failed on a write: the other user is gone (404) or the caller is (401)."""
    constraint = err.diag.constraint_name or ""
    if constraint.endswith(("_sender_id_fkey", "_requester_id_fkey")):
        return user_gone()
    return ApiError(404, f"no user {other_user_id}")
