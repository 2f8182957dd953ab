"""The OpenAPI 3.1 document served at /openapi.json, and the request limits it promises.

Both modes serve the same document (same routes, same answers); only `info.description` names the
mode. Request schemas state exactly what the server accepts (api.py validates with the limits
defined here), so a client that follows the document is never refused with 400 or 422. Response
schemas are strict about the fields each answer always has, so a schema check of real responses
(tests/integration/test_api_schema.py) catches a drifting answer. tests/unit/test_openapi.py
checks that the document and the routes list the same paths, methods and operations.
"""

from __future__ import annotations

from typing import Any

from opskit import __version__

MAX_ID = 2**63 - 1  # ids are PostgreSQL bigint identities
MAX_PAGE = 10_000
MAX_PER_PAGE = 100
DEFAULT_PER_PAGE = 20
MAX_QUERY_CHARS = 100
MAX_MESSAGE_CHARS = 5000
# Room for any body the request schemas allow: 5,000 characters sent as JSON escapes (up to 12
# bytes for a character outside the BMP) plus the ids.
MAX_BODY_BYTES = 64 * 1024
# Text fields and `q`: besides their length, at least one character other than a space or a C0
# control character, and no NUL (PostgreSQL text cannot hold one). The server strips spaces and
# control characters from both ends.
BLANK = "".join(map(chr, range(0x21)))
NOT_BLANK_PATTERN = r"^[^\u0000]*[^\u0000-\u0020][^\u0000]*$"

INTEGER = {"type": "integer"}
COUNT = {"type": "integer", "minimum": 0}
ID = {"type": "integer", "minimum": 1, "maximum": MAX_ID}
TEXT = {"type": "string"}
TIME = {"type": "string", "format": "date-time"}


def _nullable(schema: dict) -> dict:
    return {**schema, "type": [schema["type"], "null"]}


def _object(properties: dict[str, dict], optional: tuple[str, ...] = ()) -> dict:
    return {
        "type": "object",
        "properties": properties,
        "required": [name for name in properties if name not in optional],
    }


ERROR = _object({"error": TEXT})

USER_STATS = _object(
    {
        "user_id": ID,
        **{
            name: COUNT
            for name in (
                "projects_count",
                "upvotes_received",
                "downvotes_received",
                "comments_received",
                "votes_cast",
                "followers_count",
                "following_count",
                "unread_messages",
                "pending_intros_received",
            )
        },
    }
)
INTRO_STATS = _object(
    {
        "user_id": ID,
        **{
            f"{side}_{what}": COUNT
            for side in ("sent", "received")
            for what in ("total", "pending", "accepted", "declined")
        },
    }
)
FEED_ITEM = _object(
    {
        "id": ID,
        "title": TEXT,
        "tagline": _nullable(TEXT),
        "tags": {"type": "array", "items": TEXT},
        "owner_id": ID,
        "owner_username": TEXT,
        "owner_display_name": TEXT,
        "chain_id": _nullable(ID),
        "chain_slug": _nullable(TEXT),
        "chain_name": _nullable(TEXT),
        "created_at": TIME,
        "upvotes": COUNT,
        "downvotes": COUNT,
        "score": INTEGER,
        "comments_count": COUNT,
        "trending_score": {"type": "number"},
        "has_upvoted": {"type": "boolean", "description": "only with a bearer token"},
    },
    optional=("has_upvoted",),
)
COMMENT = _object({"id": ID, "user_id": ID, "username": TEXT, "body": TEXT, "created_at": TIME})
PROJECT = _object(
    {
        **{k: v for k, v in FEED_ITEM["properties"].items() if k != "trending_score"},
        "description": _nullable(TEXT),
        "updated_at": TIME,
        "recent_comments": {"type": "array", "items": COMMENT, "maxItems": 5},
    },
    optional=("has_upvoted",),
)
LEADERBOARD_PROJECT = _object(
    {
        "rank": ID,
        "id": ID,
        "title": TEXT,
        "owner_id": ID,
        "owner_username": TEXT,
        "upvotes": COUNT,
        "downvotes": COUNT,
        "score": INTEGER,
        "comments_count": COUNT,
    }
)
LEADERBOARD_BUILDER = _object(
    {
        "rank": ID,
        "id": ID,
        "username": TEXT,
        "display_name": TEXT,
        "projects_count": COUNT,
        "upvotes_received": COUNT,
        "downvotes_received": COUNT,
        "score": INTEGER,
        "followers_count": COUNT,
    }
)
CHAIN = _object(
    {
        "id": ID,
        "slug": TEXT,
        "name": TEXT,
        "description": _nullable(TEXT),
        "created_at": TIME,
        "members_count": COUNT,
        "projects_count": COUNT,
        "posts_count": COUNT,
        "last_activity_at": TIME,
    }
)
CHAIN_POST = _object(
    {
        "id": ID,
        "chain_id": ID,
        "chain_slug": TEXT,
        "author_id": ID,
        "author_username": TEXT,
        "title": TEXT,
        "body_preview": TEXT,
        "created_at": TIME,
        "replies_count": COUNT,
        "last_reply_at": _nullable(TIME),
        "last_activity_at": TIME,
    }
)
SEARCH_HIT = _object(
    {
        "kind": {"type": "string", "enum": ["project", "builder", "chain"]},
        "id": ID,
        "title": TEXT,
        "subtitle": _nullable(TEXT),
        "similarity": {"type": "number", "minimum": 0, "maximum": 1},
        "popularity": INTEGER,
    }
)
INVESTOR = _object(
    {
        "id": ID,
        "username": TEXT,
        "display_name": TEXT,
        "firm": _nullable(TEXT),
        "check_size_min": _nullable(INTEGER),
        "check_size_max": _nullable(INTEGER),
        "focus": _nullable(TEXT),
        "intros_received": COUNT,
        "intros_accepted": COUNT,
        "acceptance_rate": _nullable({"type": "number", "minimum": 0, "maximum": 1}),
        "followers_count": COUNT,
    }
)
CONVERSATION = _object(
    {
        "other_user_id": ID,
        "other_username": TEXT,
        "other_display_name": TEXT,
        "message_count": COUNT,
        "unread_count": COUNT,
        "last_message_id": ID,
        "last_message_at": TIME,
        "last_message_sender_id": ID,
        "last_message_preview": TEXT,
    }
)
VOTE_RESULT = _object(
    {
        "project_id": ID,
        "vote_type": {"type": "string", "enum": ["up", "down", "none"]},
        "has_upvoted": {"type": "boolean"},
        "upvotes": COUNT,
        "downvotes": COUNT,
        "score": INTEGER,
    }
)
MESSAGE = _object(
    {
        "id": ID,
        "sender_id": ID,
        "recipient_id": ID,
        "body": TEXT,
        "created_at": TIME,
        "read_at": _nullable(TIME),
    }
)
INTRO = _object(
    {
        "id": ID,
        "requester_id": ID,
        "target_id": ID,
        "project_id": _nullable(ID),
        "status": {"type": "string", "enum": ["pending", "accepted", "declined"]},
        "message": _nullable(TEXT),
        "created_at": TIME,
        "responded_at": _nullable(TIME),
    }
)

HEALTH = _object(
    {
        "status": {"type": "string", "enum": ["ok", "degraded"]},
        "mode": {"type": "string", "enum": ["before", "after"]},
        "database": TEXT,
        "redis": TEXT,
        "vote_cache_failures": COUNT,
        "answer_cache": _object(
            {
                "listening": {"type": "boolean"},
                **{
                    name: COUNT
                    for name in ("entries", "bytes", "hits", "misses", "joined", "dropped")
                },
            }
        ),
    },
    optional=("vote_cache_failures", "answer_cache"),
)

PAGE_PARAMETERS = [
    {"name": "page", "in": "query", "schema": {**ID, "maximum": MAX_PAGE, "default": 1}},
    {
        "name": "per_page",
        "in": "query",
        "schema": {**ID, "maximum": MAX_PER_PAGE, "default": DEFAULT_PER_PAGE},
    },
]


def _text_input(max_chars: int) -> dict:
    return {
        "type": "string",
        "minLength": 1,
        "maxLength": max_chars,
        "pattern": NOT_BLANK_PATTERN,
        "description": f"1 to {max_chars} characters, not only spaces and control characters, "
        "no NUL; spaces and control characters at either end are dropped",
    }


def _request_body(properties: dict[str, dict], optional: tuple[str, ...] = ()) -> dict:
    return {
        **_object(properties, optional),
        "additionalProperties": True,
        "description": "Properties not listed here are ignored. An integer may be sent as a "
        "number with a zero fraction (390.0 is 390).",
    }


def _page_of(item: dict, **extra: dict) -> dict:
    return _object(
        {
            "items": {"type": "array", "items": item},
            "page": ID,
            "per_page": ID,
            "has_more": {"type": "boolean"},
            **extra,
        }
    )


def _json(schema: dict, description: str, links: dict | None = None) -> dict:
    response = {"description": description, "content": {"application/json": {"schema": schema}}}
    if links:
        response["links"] = links
    return response


def _errors(*statuses: int) -> dict[str, dict]:
    meaning = {
        400: "bad query string or malformed JSON body",
        401: "missing, invalid or expired token, or the token's user is gone",
        403: "not allowed for the caller (someone else's intro, or the caller themselves)",
        404: "unknown id or slug",
        409: "already answered",
        413: f"body over {MAX_BODY_BYTES // 1024} KiB",
        422: "well-formed body with missing or invalid fields",
        503: "database (or Redis) unreachable",
    }
    return {str(status): _json(ERROR, meaning[status]) for status in statuses}


def _get(
    operation_id: str,
    summary: str,
    schema: dict,
    *errors: int,
    parameters=(),
    auth=None,
    links: dict | None = None,
) -> dict:
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "summary": summary,
        "parameters": list(parameters),
        "responses": {"200": _json(schema, "OK", links), **_errors(*errors, 503)},
    }
    if auth == "required":
        operation["security"] = [{"bearer": []}]
        operation["responses"].update(_errors(401))
    elif auth == "optional":
        operation["security"] = [{"bearer": []}, {}]
        operation["responses"].update(_errors(401))
    return operation


def _post(
    operation_id: str,
    summary: str,
    body: dict | None,
    schema: dict,
    status: int,
    *errors: int,
    parameters=(),
    links: dict | None = None,
) -> dict:
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "summary": summary,
        "security": [{"bearer": []}],
        "parameters": list(parameters),
        "responses": {
            str(status): _json(schema, "OK", links),
            **_errors(*errors, 401, 503),
        },
    }
    if body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": body}},
        }
        operation["responses"].update(_errors(400, 413, 422))
    return operation


def _path_id(name: str) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": ID}


def _link(operation_id: str, **parameters: str) -> dict:
    """An OpenAPI link: what the answer lets a client call next, with values taken from it."""
    return {"operationId": operation_id, "parameters": parameters}


def openapi_document(mode: str) -> dict:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "opskit API",
            "version": __version__,
            "description": f"The project discovery app's API, {mode} mode. "
            "Both modes give the same answers on the same data.",
        },
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            }
        },
        "paths": {
            "/api/health": {
                "get": {
                    "operationId": "health",
                    "summary": "Mode, database and Redis reachability (503 when one is down)",
                    "responses": {
                        "200": _json(HEALTH, "every server answers"),
                        "503": _json(HEALTH, "the database or Redis does not answer"),
                    },
                }
            },
            "/api/health/db": {
                "get": _get(
                    "health_db",
                    "One SELECT 1 through the pool: the stack's floor for benchmarks",
                    _object({"ok": {"type": "boolean"}}),
                )
            },
            "/api/users/stats": {
                "get": _get(
                    "user_stats", "The caller's dashboard counters", USER_STATS, auth="required"
                )
            },
            "/api/projects": {
                "get": _get(
                    "feed",
                    "The project feed; with a token each item carries has_upvoted",
                    _page_of(
                        FEED_ITEM,
                        sort={"type": "string", "enum": ["trending", "newest", "top"]},
                        as_of=TIME,
                    ),
                    400,
                    auth="optional",
                    parameters=[
                        {
                            "name": "sort",
                            "in": "query",
                            "schema": {
                                "type": "string",
                                "enum": ["trending", "newest", "top"],
                                "default": "trending",
                            },
                        },
                        {
                            "name": "as_of",
                            "in": "query",
                            "description": "instant the trending score is computed for, an RFC "
                            "3339 date-time from year 0001 to 9999; one without an offset is read "
                            "as UTC (default: now in before mode; in after mode the instant of the "
                            "scores the feed view's last refresh stored, which the answer's as_of "
                            "carries)",
                            "schema": TIME,
                        },
                        *PAGE_PARAMETERS,
                    ],
                )
            },
            "/api/projects/{project_id}": {
                "get": _get(
                    "project",
                    "One live project with its five newest comments",
                    PROJECT,
                    404,
                    auth="optional",
                    parameters=[_path_id("project_id")],
                )
            },
            "/api/leaderboard/projects": {
                "get": _get(
                    "leaderboard_projects",
                    "Projects by score (ties: lower id first)",
                    _page_of(LEADERBOARD_PROJECT),
                    400,
                    parameters=PAGE_PARAMETERS,
                )
            },
            "/api/leaderboard/builders": {
                "get": _get(
                    "leaderboard_builders",
                    "Builders (users with a live project) by score",
                    _page_of(LEADERBOARD_BUILDER),
                    400,
                    parameters=PAGE_PARAMETERS,
                )
            },
            "/api/chains": {
                "get": _get(
                    "chains",
                    "Chain discovery",
                    _page_of(CHAIN, sort={"type": "string"}),
                    400,
                    parameters=[
                        {
                            "name": "sort",
                            "in": "query",
                            "schema": {
                                "type": "string",
                                "enum": ["members", "activity", "newest"],
                                "default": "members",
                            },
                        },
                        *PAGE_PARAMETERS,
                    ],
                )
            },
            "/api/chains/{slug}/posts": {
                "get": _get(
                    "chain_posts",
                    "A chain's forum posts, latest activity first",
                    _page_of(CHAIN_POST, chain=TEXT),
                    400,
                    404,
                    parameters=[
                        {
                            "name": "slug",
                            "in": "path",
                            "required": True,
                            "schema": {
                                "type": "string",
                                "minLength": 1,
                                "maxLength": MAX_QUERY_CHARS,
                            },
                        },
                        *PAGE_PARAMETERS,
                    ],
                )
            },
            "/api/search": {
                "get": _get(
                    "search",
                    "Search projects, builders and chains by words, typos forgiven (pg_trgm)",
                    _page_of(SEARCH_HIT, q=TEXT),
                    400,
                    parameters=[
                        {
                            "name": "q",
                            "in": "query",
                            "required": True,
                            "schema": _text_input(MAX_QUERY_CHARS),
                        },
                        *PAGE_PARAMETERS,
                    ],
                )
            },
            "/api/investors": {
                "get": _get(
                    "investors",
                    "Investors directory, most followed first",
                    _page_of(INVESTOR),
                    400,
                    parameters=PAGE_PARAMETERS,
                )
            },
            "/api/messages/conversations": {
                "get": _get(
                    "conversations",
                    "The caller's conversations, most recent first",
                    _page_of(CONVERSATION),
                    400,
                    auth="required",
                    parameters=PAGE_PARAMETERS,
                )
            },
            "/api/intros/stats": {
                "get": _get(
                    "intro_stats",
                    "The caller's intro request counters",
                    INTRO_STATS,
                    auth="required",
                )
            },
            "/api/votes": {
                "post": _post(
                    "vote",
                    "Vote on a project ('none' removes the vote); the project's new counts",
                    _request_body(
                        {
                            "project_id": ID,
                            "vote_type": {"type": "string", "enum": ["up", "down", "none"]},
                        }
                    ),
                    VOTE_RESULT,
                    200,
                    404,
                    links={"project": _link("project", project_id="$response.body#/project_id")},
                )
            },
            "/api/messages": {
                "post": _post(
                    "send_message",
                    "Send a message (not to oneself: 403)",
                    _request_body({"recipient_id": ID, "body": _text_input(MAX_MESSAGE_CHARS)}),
                    MESSAGE,
                    201,
                    403,
                    404,
                    links={
                        "read": _link("mark_read", other_user_id="$response.body#/recipient_id")
                    },
                )
            },
            "/api/messages/{other_user_id}/read": {
                "post": _post(
                    "mark_read",
                    "Mark every message from that user to the caller read",
                    None,
                    _object({"other_user_id": ID, "marked_read": COUNT}),
                    200,
                    404,
                    parameters=[_path_id("other_user_id")],
                )
            },
            "/api/intros": {
                "post": _post(
                    "request_intro",
                    "Ask for an intro to a user, optionally about a project (not to oneself: 403)",
                    _request_body(
                        {
                            "target_id": ID,
                            "project_id": _nullable(ID),
                            "message": _nullable(_text_input(MAX_MESSAGE_CHARS)),
                        },
                        optional=("project_id", "message"),
                    ),
                    INTRO,
                    201,
                    403,
                    404,
                    links={"respond": _link("respond_intro", intro_id="$response.body#/id")},
                )
            },
            "/api/intros/{intro_id}/respond": {
                "post": _post(
                    "respond_intro",
                    "Accept or decline an intro request sent to the caller",
                    _request_body({"status": {"type": "string", "enum": ["accepted", "declined"]}}),
                    INTRO,
                    200,
                    403,
                    404,
                    409,
                    parameters=[_path_id("intro_id")],
                )
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "responses": {"200": {"description": "OpenAPI 3.1 document"}},
                }
            },
        },
    }
