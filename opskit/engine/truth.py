"""The denormalized relations of docs/interface.md §6 and set-based diffs against their truths."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from opskit.sql import queries

# Planner settings of every diff, local to it (the caller's come back after). JIT compiles
# 70-150 expressions per truth query, 100-300 ms for nothing on these plans; the hash
# aggregates, sorts and joins of 100k-250k rows spill to disk with the default 4MB; a parallel
# plan of the conversations truth has every worker build the whole per-pair aggregate (3x the
# work), and reconcile already runs the three diffs at once.
TRUTH_PLANNER: tuple[tuple[str, str], ...] = (
    ("jit", "off"),
    ("work_mem", "64MB"),
    ("max_parallel_workers_per_gather", "0"),
)


@dataclass(frozen=True)
class Denormalized:
    relation: str
    truth_query: str  # block name in sql/truth.sql
    keys: tuple[str, ...]
    source_rows: str  # block name in sql/truth.sql: how many app rows that truth counts
    planner: tuple[tuple[str, str], ...] = ()  # on top of TRUTH_PLANNER


DENORMALIZED: tuple[Denormalized, ...] = (
    Denormalized(
        "user_dashboard_stats",
        "truth_user_dashboard_stats",
        ("user_id",),
        "source_rows_user_dashboard_stats",
        # Its aggregates stream from index-only scans in key order; the planner would rather
        # hash 2M votes twice, which takes about twice the CPU.
        planner=(("enable_hashagg", "off"),),
    ),
    Denormalized(
        "message_conversations_denorm",
        "truth_message_conversations",
        ("user_id", "other_user_id"),
        "source_rows_message_conversations",
    ),
    Denormalized(
        "intro_request_stats",
        "truth_intro_request_stats",
        ("user_id",),
        "source_rows_intro_request_stats",
    ),
)


@dataclass(frozen=True)
class Diff:
    relation: str
    rows_compared: int
    differing: int
    first_keys: list[str]
    source_rows: int  # app rows the truth counted (its source_rows block)


def diff_against_truth(
    conn: psycopg.Connection, spec: Denormalized, sample: int | None = 5
) -> Diff:
    """Full outer join of the relation with its truth query on the keys; count differing rows.

    `first_keys` holds the first `sample` differing keys (every one with sample=None, for a
    repair). Run inside one snapshot (REPEATABLE READ) when several relations must agree with
    each other. The diff runs under the truth's planner settings, in a (sub)transaction rolled
    back at the end: it only reads, and the caller's settings come back.
    """
    truth = queries("truth.sql")[spec.truth_query].rstrip().rstrip(";")
    with conn.transaction(force_rollback=True):
        conn.execute(
            sql.SQL("SELECT {}").format(
                sql.SQL(", ").join(
                    sql.SQL("set_config({}, {}, true)").format(
                        sql.Literal(name), sql.Literal(value)
                    )
                    for name, value in TRUTH_PLANNER + spec.planner
                )
            )
        )
        columns = query_columns(conn, truth)
        missing = set(spec.keys) - set(columns)
        if missing:
            raise ValueError(f"{spec.truth_query} lacks key columns {sorted(missing)}")
        query = sql.SQL(
            """
            WITH truth AS ({truth}), relation AS (SELECT {columns} FROM {relation})
            SELECT count(*),
                   count(*) FILTER (WHERE differs),
                   (array_agg(key_text ORDER BY key_text) FILTER (WHERE differs))
                       [1:coalesce(%(sample)s::integer, 2147483647)],
                   {source_rows}
            FROM (
                SELECT t.*,
                       ROW({truth_columns}) IS DISTINCT FROM ROW({relation_columns}) AS differs,
                       concat_ws(',', {keys}) AS key_text
                FROM truth t FULL JOIN relation r ON {join}
            ) AS t
            """
        ).format(
            truth=sql.SQL(truth),
            columns=sql.SQL(", ").join(map(sql.Identifier, columns)),
            relation=sql.Identifier(spec.relation),
            source_rows=sql.SQL(queries("truth.sql")[spec.source_rows]),
            **outer_join_parts(columns, spec.keys),
        )
        compared, differing, first_keys, source_rows = conn.execute(
            query, {"sample": sample}
        ).fetchone()
    return Diff(spec.relation, compared, differing, list(first_keys or []), int(source_rows or 0))


def query_columns(conn: psycopg.Connection, query: str, params: dict | None = None) -> list[str]:
    """The output columns of `query`, without running it."""
    cursor = conn.execute(sql.SQL("SELECT * FROM ({}) AS q LIMIT 0").format(sql.SQL(query)), params)
    return [column.name for column in cursor.description]


def outer_join_parts(columns: list[str], keys: tuple[str, ...]) -> dict[str, sql.Composable]:
    """The pieces of a truth t FULL JOIN relation r diff on `keys`: both rows as column lists
    (truth_columns, relation_columns), the key of either side (keys) and the join condition."""
    return {
        "truth_columns": sql.SQL(", ").join(sql.Identifier("t", c) for c in columns),
        "relation_columns": sql.SQL(", ").join(sql.Identifier("r", c) for c in columns),
        "keys": sql.SQL(", ").join(
            sql.SQL("coalesce({}, {})").format(sql.Identifier("t", k), sql.Identifier("r", k))
            for k in keys
        ),
        "join": sql.SQL(" AND ").join(
            sql.SQL("{} = {}").format(sql.Identifier("t", k), sql.Identifier("r", k)) for k in keys
        ),
    }
