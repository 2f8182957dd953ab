"""`opskit reconcile --changed`: check only the keys touched since the last check.

phase1_denormalized_tables keeps opskit_reconcile_keys: the folds record the users and projects of
the delta rows they consume, the messages trigger the conversations it changes, and (phase 2) the
daemon's routing the owners and users of the change log; the view keys its batches applied wait in
phase 2's insert-only mv_applied_keys until the next routing or check moves them in. A check,
one at a time (an advisory lock), claims every recorded key, then, in one REPEATABLE READ
snapshot, compares:

- the user_dashboard_stats and intro_request_stats rows of the touched users with their truth
  computed for those users only, and the project_stats rows (the per-project counts the
  dashboard sums over each owner's live projects) of the touched projects with theirs;
- both rows of every touched conversation with its truth;
- each maintained view's rows of the touched keys whose changes are applied with the view's
  definition for those keys (<view>_def(kinds, keys)); keys with changes still
  pending are not drift (their next batch records them again);

then the cached Redis vote sets of the touched users with their votes, and the views' age (the
full reconcile's view_freshness). --fix repairs through the full reconcile's paths (backfill
functions, guarded Redis rebuilds, the views' pending changes applied by the refresh code path)
and re-checks. Keys found drifted (and not repaired) stay recorded for the next check; the
others are forgotten, unless a write touched them again during the check.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import psycopg
import redis
from psycopg import sql

from opskit.core.db import connect, redis_client
from opskit.core.errors import EnvironmentProblem
from opskit.core.settings import Settings
from opskit.engine import reconcile, refresh, votecache
from opskit.engine.backfill import BACKFILL_STEPS
from opskit.engine.truth import DENORMALIZED, outer_join_parts, query_columns
from opskit.sql import queries

VIEW_ROWS_CHECK = "view_rows"
REDIS_BATCH = 1000
CHECK_WORKERS = 3  # connections comparing at once in the snapshot (the full reconcile's three)
# A view key's kind (<view>_keys) -> the change-log entity that makes that view recompute
# exactly that key (a repair queued as a pending change of that view only).
KIND_ENTITY = {"project": "project", "user": "user", "builder": "user", "chain": "chain",
               "post": "post"}  # fmt: skip


class NoTouchedKeys(EnvironmentProblem):
    """opskit_reconcile_keys is missing: phase 1 is not applied (or came from an older opskit)."""


@dataclass(frozen=True)
class KeyedRelation:
    relation: str
    keys: tuple[str, ...]
    truth: str  # blocks of reconcile_changed.sql
    rows: str


PROJECT_STATS = "project_stats"
KEYED: dict[str, KeyedRelation] = {
    PROJECT_STATS: KeyedRelation(
        PROJECT_STATS, ("project_id",), "truth_project_stats", "relation_project_stats"
    ),
    "user_dashboard_stats": KeyedRelation(
        "user_dashboard_stats",
        ("user_id",),
        "truth_user_dashboard_stats",
        "relation_user_dashboard_stats",
    ),
    "message_conversations_denorm": KeyedRelation(
        "message_conversations_denorm",
        ("user_id", "other_user_id"),
        "truth_message_conversations",
        "relation_message_conversations_denorm",
    ),
    "intro_request_stats": KeyedRelation(
        "intro_request_stats",
        ("user_id",),
        "truth_intro_request_stats",
        "relation_intro_request_stats",
    ),
}
SPECS = {spec.relation: spec for spec in DENORMALIZED}


@dataclass
class Touched:
    """The claimed keys: rows of opskit_reconcile_keys, by what they name."""

    count: int = 0
    users: set[int] = field(default_factory=set)
    projects: set[int] = field(default_factory=set)
    pairs: set[tuple[int, int]] = field(default_factory=set)  # (lo, hi)
    views: dict[str, dict[str, tuple[str, int]]] = field(
        default_factory=lambda: defaultdict(dict)
    )  # view -> {key text: (kind, key)}


KeyRow = tuple[str, str, int, int]  # entity, kind, entity_id, other_id


def reconcile_changed(
    settings: Settings, url: str, redis_url: str, *, fix: bool = False
) -> reconcile.ReconcileReport:
    """Check (and with `fix` repair) the keys touched since the last check; record the run."""
    started_at = dt.datetime.now(dt.UTC)
    started = time.perf_counter()
    changed_sql = queries("reconcile_changed.sql")
    with redis_client(redis_url) as client, connect(url, autocommit=True) as conn:
        if not conn.execute("SELECT to_regclass('opskit_reconcile_keys') IS NOT NULL").fetchone()[
            0
        ]:
            raise NoTouchedKeys(
                "no touched keys to check: opskit_reconcile_keys is missing "
                "(phase1_denormalized_tables is not applied, or came from an older opskit)",
                hint="run `opskit migrate`; after an upgrade, `opskit rollback --to "
                "phase0_cleanup && opskit migrate`; `opskit reconcile` checks every row",
            )
        conn.execute(queries("reconcile.sql")["create_tables"])
        conn.execute(changed_sql["lock"])
        try:
            if conn.execute("SELECT to_regclass('mv_applied_keys') IS NOT NULL").fetchone()[0]:
                conn.execute(queries("refresh.sql")["collect_applied_keys"])
            touched = _claim(conn)
            checks, keep, relations_seconds = _check_and_fix(
                conn, client, url, settings, touched, fix=fix
            )
            if keep:
                entities, kinds, ids, others = (list(column) for column in zip(*keep, strict=True))
                conn.execute(
                    changed_sql["keep_keys"],
                    {"entities": entities, "kinds": kinds, "ids": ids, "others": others},
                )
            conn.execute(changed_sql["forget_claimed_keys"])
        finally:
            conn.execute(changed_sql["unlock"])
        truth_rows = sum(check.rows_checked for check in checks[: len(KEYED)])
        report = reconcile.ReconcileReport(
            checks=checks,
            fix=fix,
            seconds=round(time.perf_counter() - started, 3),
            truth_rows_per_s=(
                round(truth_rows / relations_seconds) if truth_rows and relations_seconds else None
            ),
            source_rows=None,
            source_rows_per_s=None,
            relations_seconds=relations_seconds,
            changed=True,
            keys_checked=touched.count,
        )
        report.run_id = reconcile.record_run(conn, report, started_at)
    return report


def _claim(conn: psycopg.Connection) -> Touched:
    touched = Touched()
    for entity, kind, entity_id, other_id in conn.execute(
        queries("reconcile_changed.sql")["claim_keys"]
    ):
        touched.count += 1
        if entity == "user":
            touched.users.add(entity_id)
        elif entity == "project":
            touched.projects.add(entity_id)
        elif entity == "conversation":
            touched.pairs.add((entity_id, other_id))
        elif entity in refresh.MAINTAINED:
            single = len(refresh.MAINTAINED[entity].key) == 1
            text = str(entity_id) if single else f"{kind}:{entity_id}"
            touched.views[entity][text] = (kind, entity_id)
    return touched


def _check_and_fix(
    conn: psycopg.Connection,
    client: redis.Redis,
    url: str,
    settings: Settings,
    touched: Touched,
    *,
    fix: bool,
) -> tuple[list[reconcile.Check], list[KeyRow], float]:
    """Every check (relations and views in one snapshot); the keys to keep; the relations' time.

    The relations and each view are compared at once on CHECK_WORKERS connections of their own,
    all in the snapshot a REPEATABLE READ transaction exports (as the full reconcile does).
    """
    with connect(url) as leader:
        _begin_snapshot(leader)
        snapshot = leader.execute("SELECT pg_export_snapshot()").fetchone()[0]
        users = sorted(touched.users)
        known = set(refresh.known_views(leader)) if touched.views else set()
        tasks = [("relation", name) for name in KEYED] + [
            ("view", view) for view in touched.views if view in known and touched.views[view]
        ]

        def run(task: tuple[str, str]) -> tuple:
            kind, name = task
            with connect(url) as worker:
                _begin_snapshot(worker, snapshot)
                started = time.perf_counter()
                if kind == "relation":
                    result = _relation_diff(worker, name, users, touched)
                else:
                    result = _view_diff(worker, name, touched.views[name])
                return result, round(time.perf_counter() - started, 3)

        with ThreadPoolExecutor(CHECK_WORKERS) as pool:
            results = dict(zip(tasks, pool.map(run, tasks), strict=True))
        leader.rollback()
    diffs = {name: results[("relation", name)] for name in KEYED}
    relations_seconds = max(max(seconds for _, seconds in diffs.values()), 0.001)
    view_results = {task[1]: result for task, result in results.items() if task[0] == "view"}
    view_rows = sum(compared for (compared, _), _ in view_results.values())
    view_drift = {view: drifted for view, ((_, drifted), _) in view_results.items() if drifted}
    views_seconds = max((seconds for _, seconds in view_results.values()), default=0.0)

    checks: list[reconcile.Check] = []
    keep: list[KeyRow] = []
    for name, ((compared, drifted), seconds) in diffs.items():
        check = reconcile.Check(name, compared, len(drifted), sample=drifted[:5], seconds=seconds)
        remaining = drifted
        if fix and drifted:
            remaining = _repair_relation(conn, name, drifted)
            check.remaining = len(remaining)
            check.fixed = max(check.drift - check.remaining, 0)
        keep += [_key_row(name, key) for key in remaining]
        checks.append(check)

    redis_check, redis_left = _check_redis(
        conn, client, settings.redis_prefix, sorted(touched.users), fix
    )
    checks.append(redis_check)
    keep += [("user", "", user, 0) for user in redis_left]

    check = reconcile.Check(
        VIEW_ROWS_CHECK,
        view_rows,
        sum(len(keys) for keys in view_drift.values()),
        sample=[f"{view}:{key}" for view, keys in view_drift.items() for key in keys][:5],
        seconds=round(views_seconds, 3),
    )
    remaining_views = view_drift
    if fix and check.drift:
        remaining_views = _repair_views(conn, url, settings, touched, view_drift)
        check.remaining = sum(len(keys) for keys in remaining_views.values())
        check.fixed = max(check.drift - check.remaining, 0)
    for view, keys in remaining_views.items():
        keep += [(view, *touched.views[view][key], 0) for key in keys]
    checks.append(check)
    checks.append(reconcile.check_views(conn, url, settings, fix=fix))
    return checks, keep, relations_seconds


def _begin_snapshot(conn: psycopg.Connection, snapshot: str | None = None) -> None:
    """One snapshot for every check (`snapshot`: an exported one); plans made for the actual
    keys (as the refresh does: the definitions' `keys IS NULL` folds away), no JIT for these
    small queries."""
    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
    if snapshot is not None:
        conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
    conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
    conn.execute("SET LOCAL jit = off")


def _pair_params(pairs: set[tuple[int, int]]) -> dict:
    ordered = sorted(pairs)
    return {"los": [lo for lo, _ in ordered], "his": [hi for _, hi in ordered]}


def _relation_diff(
    conn: psycopg.Connection, name: str, users: list[int], touched: Touched
) -> tuple[int, list[str]]:
    """Rows compared and the differing keys ("user", "user,other" or "project") of one
    relation."""
    if name == "message_conversations_denorm":
        if not touched.pairs:
            return 0, []
        params = _pair_params(touched.pairs)
    elif name == PROJECT_STATS:
        if not touched.projects:
            return 0, []
        params = {"project_ids": sorted(touched.projects)}
    else:
        if not users:
            return 0, []
        params = {"user_ids": users}
    return _keyed_diff(conn, KEYED[name], params)


def _keyed_diff(conn: psycopg.Connection, spec: KeyedRelation, params: dict) -> tuple[int, list]:
    changed_sql = queries("reconcile_changed.sql")
    truth = changed_sql[spec.truth]
    query = sql.SQL(changed_sql["keyed_diff"]).format(
        truth=sql.SQL(truth),
        relation=sql.SQL(changed_sql[spec.rows]),
        **outer_join_parts(query_columns(conn, truth, params), spec.keys),
    )
    compared, drifted = conn.execute(query, params).fetchone()
    return compared, list(drifted)


def _key_row(relation: str, key: str) -> KeyRow:
    parts = [int(part) for part in key.split(",")]
    if relation == "message_conversations_denorm":
        return ("conversation", "", min(parts), max(parts))
    return ("project" if relation == PROJECT_STATS else "user", "", parts[0], 0)


def _repair_relation(conn: psycopg.Connection, name: str, drifted: list[str]) -> list[str]:
    """Recompute the drifted keys with the backfill functions; the keys still drifted."""
    ids = sorted({int(key.split(",")[0]) for key in drifted})
    if name == PROJECT_STATS:  # the dashboard's per-project step, over those projects only
        step = next(s for s in BACKFILL_STEPS["user_dashboard_stats"] if s.id_table == "projects")
        statement = sql.SQL("SELECT {}(%s, %s)").format(sql.Identifier(step.function))
        for lo, hi in reconcile.id_ranges(ids, reconcile.REPAIR_BATCH_IDS):
            conn.execute(statement, (lo, hi))
        refresh.note_projects_changed(conn, ids)
        params: dict = {"project_ids": ids}
    elif name == "message_conversations_denorm":
        reconcile.repair_relation(conn, SPECS[name], ids)
        params = _pair_params({_key_row(name, key)[2:] for key in drifted})
    else:
        reconcile.repair_relation(conn, SPECS[name], ids)
        params = {"user_ids": ids}
    with conn.transaction():
        _begin_snapshot(conn)
        return _keyed_diff(conn, KEYED[name], params)[1]


# ---------------------------------------------------------------------------- redis


def _check_redis(
    conn: psycopg.Connection, client: redis.Redis, prefix: str, users: list[int], fix: bool
) -> tuple[reconcile.Check, list[int]]:
    """The cached vote sets of the touched users against their votes (a missing key is not
    cached, never drift; a differing one is read again before it counts); the users still
    drifted."""
    started = time.perf_counter()
    cached_count = 0
    suspects: list[int] = []
    for start in range(0, len(users), REDIS_BATCH):
        batch = users[start : start + REDIS_BATCH]
        pipe = client.pipeline(transaction=False)
        for user_id in batch:
            pipe.smembers(votecache.upvotes_key(prefix, user_id))
        # Redis keeps no empty set (and opskit caches no user without upvotes): an empty reply
        # is a key that is not cached; an error (another type under the key) is drift.
        replies = pipe.execute(raise_on_error=False)
        cached = {
            user_id: votecache.parse_members(members)
            for user_id, members in zip(batch, replies, strict=True)
            if isinstance(members, Exception) or members
        }
        if cached:
            cached_count += len(cached)
            truth = votecache.upvoted_projects(conn, list(cached))
            suspects += [user for user, members in cached.items() if members != truth[user]]
    drifted = reconcile.still_differing(client, conn, prefix, suspects)
    check = reconcile.Check(
        reconcile.REDIS_CHECK, cached_count, len(drifted), sample=[str(u) for u in drifted[:5]]
    )
    remaining = drifted
    if fix and drifted:
        check.fixed = reconcile.rebuild_until_done(client, conn, prefix, drifted)
        remaining = reconcile.still_differing(client, conn, prefix, drifted)
        check.remaining = len(remaining)
    check.seconds = round(time.perf_counter() - started, 3)
    return check, remaining


# ---------------------------------------------------------------------------- views


def _view_diff(
    conn: psycopg.Connection, view: str, keys: dict[str, tuple[str, int]]
) -> tuple[int, list[str]]:
    """A view's touched keys compared, and those whose rows differ from the definition with no
    change of theirs pending. In the caller's snapshot."""
    spec = refresh.MAINTAINED[view]
    differing = _view_keys_diff(conn, spec, list(keys.values()))
    pending = refresh.pending_keys(conn, spec) if differing else set()
    if pending is None:  # a full rebuild is pending: every key will be recomputed
        return 0, []
    return len(keys), [key for key in differing if key not in pending]


def _view_keys_diff(
    conn: psycopg.Connection, spec: refresh.MaintainedView, keys: list[tuple[str, int]]
) -> list[str]:
    refresh_sql = queries("refresh.sql")
    columns = [row[0] for row in conn.execute(refresh_sql["columns"], {"view": spec.name})]
    if len(spec.key) == 1:
        match = sql.SQL("{} = ANY (%(keys)s::bigint[])").format(sql.Identifier(spec.key[0]))
        key = sql.Identifier(spec.key[0])
    else:
        match = sql.SQL("({}) IN (SELECT * FROM unnest(%(kinds)s::text[], %(keys)s::bigint[]))")
        match = match.format(sql.SQL(", ").join(map(sql.Identifier, spec.key)))
        key = sql.SQL(", ").join(map(sql.Identifier, spec.key))
    query = sql.SQL(queries("reconcile_changed.sql")["view_keys_diff"]).format(
        view=sql.Identifier(spec.name),
        definition=spec.definition,
        columns=sql.SQL(", ").join(map(sql.Identifier, columns)),
        match=match,
        key=key,
    )
    params = {"kinds": [kind for kind, _ in keys], "keys": [key for _, key in keys]}
    return list(conn.execute(query, params).fetchone()[0])


def _repair_views(
    conn: psycopg.Connection,
    url: str,
    settings: Settings,
    touched: Touched,
    drift: dict[str, list[str]],
) -> dict[str, list[str]]:
    """Queue the drifted keys as pending changes of their view, apply them through the refresh
    code path, and return the keys still drifted (a key whose repair is still pending, because
    a daemon holds the view, is not: the daemon applies it)."""
    changed_sql = queries("reconcile_changed.sql")
    for view, keys in drift.items():
        kinds_keys = [touched.views[view][key] for key in keys]
        conn.execute(
            changed_sql["queue_view_keys"],
            {
                "view": view,
                "entities": [KIND_ENTITY[kind] for kind, _ in kinds_keys],
                "ids": [key for _, key in kinds_keys],
            },
        )
    refresh.refresh(url, settings, views=sorted(drift))
    remaining: dict[str, list[str]] = {}
    with conn.transaction():
        _begin_snapshot(conn)
        for view, keys in drift.items():
            differing = _view_keys_diff(
                conn, refresh.MAINTAINED[view], [touched.views[view][key] for key in keys]
            )
            pending = refresh.pending_keys(conn, refresh.MAINTAINED[view]) if differing else set()
            left = [key for key in differing if pending is not None and key not in pending]
            if left:
                remaining[view] = left
    return remaining
