"""The denormalized relations of CONTRACT §6 and set-based diffs against their truth queries."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from opskit.sql import queries


@dataclass(frozen=True)
class Denormalized:
    relation: str
    truth_query: str  # block name in sql/truth.sql
    keys: tuple[str, ...]


DENORMALIZED: tuple[Denormalized, ...] = (
    Denormalized("user_dashboard_stats", "truth_user_dashboard_stats", ("user_id",)),
    Denormalized(
        "message_conversations_denorm", "truth_message_conversations", ("user_id", "other_user_id")
    ),
    Denormalized("intro_request_stats", "truth_intro_request_stats", ("user_id",)),
)


@dataclass(frozen=True)
class Diff:
    relation: str
    rows_compared: int
    differing: int
    first_keys: list[str]


def diff_against_truth(
    conn: psycopg.Connection, spec: Denormalized, sample: int | None = 5
) -> Diff:
    """Full outer join of the relation with its truth query on the keys; count differing rows.

    `first_keys` holds the first `sample` differing keys (every one with sample=None, for a
    repair). Run inside one snapshot (REPEATABLE READ) when several relations must agree with
    each other.
    """
    truth = queries("truth.sql")[spec.truth_query].rstrip().rstrip(";")
    columns = _columns(conn, truth)
    missing = set(spec.keys) - set(columns)
    if missing:
        raise ValueError(f"{spec.truth_query} lacks key columns {sorted(missing)}")
    query = sql.SQL(
        """
        WITH truth AS ({truth}), relation AS (SELECT {columns} FROM {relation})
        SELECT count(*),
               count(*) FILTER (WHERE differs),
               (array_agg(key_text ORDER BY key_text) FILTER (WHERE differs))
                   [1:coalesce(%(sample)s::integer, 2147483647)]
        FROM (
            SELECT ROW({truth_columns}) IS DISTINCT FROM ROW({relation_columns}) AS differs,
                   concat_ws(',', {keys}) AS key_text
            FROM truth t FULL JOIN relation r ON {join}
        ) AS compared
        """
    ).format(
        truth=sql.SQL(truth),
        columns=sql.SQL(", ").join(map(sql.Identifier, columns)),
        relation=sql.Identifier(spec.relation),
        truth_columns=sql.SQL(", ").join(sql.Identifier("t", c) for c in columns),
        relation_columns=sql.SQL(", ").join(sql.Identifier("r", c) for c in columns),
        keys=sql.SQL(", ").join(
            sql.SQL("coalesce({}, {})").format(sql.Identifier("t", k), sql.Identifier("r", k))
            for k in spec.keys
        ),
        join=sql.SQL(" AND ").join(
            sql.SQL("{} = {}").format(sql.Identifier("t", k), sql.Identifier("r", k))
            for k in spec.keys
        ),
    )
    compared, differing, first_keys = conn.execute(query, {"sample": sample}).fetchone()
    return Diff(spec.relation, compared, differing, list(first_keys or []))


def _columns(conn: psycopg.Connection, query: str) -> list[str]:
    cursor = conn.execute(sql.SQL("SELECT * FROM ({}) AS q LIMIT 0").format(sql.SQL(query)))
    return [column.name for column in cursor.description]
