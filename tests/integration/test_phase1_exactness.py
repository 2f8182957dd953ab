"""phase1: the denormalized relations equal their truth (opskit/sql/truth.sql) after every write
path of the app, for multi-row statements, rolled-back transactions, folds, the backfill, and
under concurrent writers (real threads, and hypothesis-generated interleavings)."""

from __future__ import annotations

import contextlib
import queue
import random
import re
import threading
import time
from pathlib import Path

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opskit.benchmarking.workload import (
    EXPECTED_ERRORS,
    OP_NAMES,
    OPERATIONS,
    TRANSACTIONS,
    Writers,
    add_projects,
    add_users,
    make_world,
    op_params,
    run_op,
)
from opskit.engine import phase_files

ROOT = Path(__file__).parents[2]
MIGRATIONS = ROOT / "migrations"
TRUTH_SQL = ROOT / "opskit" / "sql" / "truth.sql"
PHASE1 = ("phase0_cleanup", "phase1_denormalized_tables", "phase1_backfill_data")

# relation -> (truth block, number of key columns)
RELATIONS = {
    "user_dashboard_stats": ("truth_user_dashboard_stats", 1),
    "message_conversations_denorm": ("truth_message_conversations", 2),
    "intro_request_stats": ("truth_intro_request_stats", 1),
}
APP_TABLES = (
    "users, chains, chain_members, projects, votes, comments, follows, chain_posts, "
    "chain_post_replies, messages, intro_requests, investor_profiles"
)
DENORM_TABLES = (
    "user_dashboard_stats_base, user_dashboard_stats_delta, project_stats_base, "
    "project_stats_delta, intro_request_stats_base, intro_request_stats_delta, "
    "message_conversations_denorm"
)


def apply_phases(url: str, names: tuple[str, ...] = PHASE1) -> None:
    """Run each phase file like a fresh `opskit migrate` does: its whole text in one transaction,
    or statement by statement when it is marked no-transaction (the batched backfill commits)."""
    with psycopg.connect(url, autocommit=True) as conn:
        for name in names:
            phase = next(p for p in phase_files.load_phases(MIGRATIONS) if p.name == name)
            if phase.transactional:
                with conn.transaction():
                    conn.execute(phase.text)
            else:
                for statement in phase.statements():
                    conn.execute(statement)


def truth_blocks() -> dict[str, str]:
    parts = re.split(r"^-- name: (\w+) --$", TRUTH_SQL.read_text(), flags=re.MULTILINE)
    return {
        name: body.strip().rstrip(";") for name, body in zip(parts[1::2], parts[2::2], strict=False)
    }


TRUTH = truth_blocks()


def diff_all(conn: psycopg.Connection) -> dict[str, str]:
    """{relation: description of the first differences} in one REPEATABLE READ snapshot."""
    problems: dict[str, str] = {}
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        # the full scan's per-user plan has a cost high enough for JIT: about 1 s of compiling
        # per check on these few rows, which leaves the concurrent tests few snapshots to check
        conn.execute("SET LOCAL jit = off")
        for relation, (block, nkeys) in RELATIONS.items():
            truth_sql = TRUTH[block]
            cursor = conn.execute(f"SELECT * FROM ({truth_sql}) AS t LIMIT 0")
            columns = [c.name for c in cursor.description]
            truth = sorted(conn.execute(truth_sql).fetchall(), key=lambda r: r[:nkeys])
            rows = sorted(
                conn.execute(f"SELECT {', '.join(columns)} FROM {relation}").fetchall(),
                key=lambda r: r[:nkeys],
            )
            if truth != rows:
                expected = {r[:nkeys]: r for r in truth}
                actual = {r[:nkeys]: r for r in rows}
                keys = sorted(
                    k for k in expected.keys() | actual.keys() if expected.get(k) != actual.get(k)
                )
                if len(rows) != len(actual):
                    keys.insert(0, "duplicate keys in relation")
                lines = [f"{len(keys)} differing keys; first ones (truth vs relation):"]
                for key in keys[:5]:
                    lines.append(f"  {key}: {expected.get(key)} vs {actual.get(key)}")
                problems[relation] = "\n".join(lines) + f"\n  columns: {columns}"
    return problems


def assert_exact(url_or_conn, context: str = "") -> None:
    if isinstance(url_or_conn, str):
        with psycopg.connect(url_or_conn, autocommit=True) as conn:
            problems = diff_all(conn)
    else:
        problems = diff_all(url_or_conn)
    assert not problems, f"{context}\n" + "\n".join(f"{k}: {v}" for k, v in problems.items())


def pending_deltas(conn: psycopg.Connection) -> int:
    return conn.execute(
        "SELECT (SELECT count(*) FROM user_dashboard_stats_delta)"
        " + (SELECT count(*) FROM project_stats_delta)"
        " + (SELECT count(*) FROM intro_request_stats_delta)"
    ).fetchone()[0]


def fold_all(conn: psycopg.Connection, max_rows: int = 1000) -> int:
    total = 0
    while True:
        n = conn.execute(
            "SELECT opskit_fold_user_dashboard_deltas(%s) + opskit_fold_intro_request_deltas(%s)",
            (max_rows, max_rows),
        ).fetchone()[0]
        total += n
        if n == 0:
            return total


def populate(conn: psycopg.Connection, rng: random.Random, users: int, projects: int) -> None:
    """Random app data with every kind of row (runs with or without phase1's triggers)."""
    uids = add_users(conn, users)
    pids = add_projects(conn, [rng.choice(uids) for _ in range(projects)])
    for pid in rng.sample(pids, max(1, projects // 4)):
        conn.execute("UPDATE projects SET deleted_at = now() WHERE id = %s", (pid,))
    votes = {(rng.choice(uids), rng.choice(pids)) for _ in range(users * 6)}
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO votes (user_id, project_id, vote_type) VALUES (%s, %s, %s)",
            [(u, p, rng.choice(["up", "up", "down"])) for u, p in votes],
        )
        cur.executemany(
            "INSERT INTO comments (project_id, user_id, body) VALUES (%s, %s, %s)",
            [(rng.choice(pids), rng.choice(uids), "c") for _ in range(users * 3)],
        )
        # choices, not sample: a user may follow or message themselves (docs/interface.md §5)
        follows = {tuple(rng.choices(uids, k=2)) for _ in range(users * 3)}
        cur.executemany("INSERT INTO follows (follower_id, followee_id) VALUES (%s, %s)", follows)
        cur.executemany(
            "INSERT INTO messages (sender_id, recipient_id, body, created_at, read_at)"
            " VALUES (%s, %s, %s, timestamptz '2024-01-01' + make_interval(secs => %s),"
            " CASE WHEN %s THEN now() END)",
            [
                (
                    *rng.choices(uids[: max(3, users // 2)], k=2),
                    "m" * rng.randrange(1, 150),
                    rng.randrange(50),
                    rng.random() < 0.5,
                )
                for _ in range(users * 8)
            ],
        )
        cur.executemany(
            "INSERT INTO intro_requests (requester_id, target_id, project_id, status)"
            " VALUES (%s, %s, %s, %s)",
            [
                (
                    *rng.sample(uids, 2),
                    rng.choice(pids + [None]),
                    rng.choice(["pending", "accepted", "declined"]),
                )
                for _ in range(users * 2)
            ],
        )


# ------------------------------------------------------------------ fixtures


@pytest.fixture
def db(base_db_url: str) -> str:
    apply_phases(base_db_url)
    return base_db_url


# ------------------------------------------------------------------ every write path, one by one

WRITE_PATHS: list[tuple[str, str]] = [
    # users and projects
    (
        "insert users (multi-row)",
        "INSERT INTO users (id, username, display_name, email) OVERRIDING SYSTEM VALUE VALUES"
        " (1,'a','A','a@x'),(2,'b','B','b@x'),(3,'c','C','c@x'),(4,'d','D','d@x'),(5,'e','E','e@x')",
    ),
    (
        "insert projects (one already soft-deleted)",
        "INSERT INTO projects (id, owner_id, title, deleted_at) OVERRIDING SYSTEM VALUE VALUES"
        " (10,1,'p10',NULL),(11,1,'p11',NULL),(12,2,'p12',NULL),(13,3,'p13',now())",
    ),
    # votes
    (
        "insert votes (multi-row)",
        "INSERT INTO votes (user_id, project_id, vote_type) VALUES (2,10,'up'),(3,10,'up'),"
        "(4,10,'down'),(5,10,'up'),(1,12,'up'),(2,12,'down'),(4,13,'up'),(1,11,'down')",
    ),
    ("flip one vote", "UPDATE votes SET vote_type = 'down' WHERE user_id = 2 AND project_id = 10"),
    (
        "flip all votes of a project",
        "UPDATE votes SET vote_type = CASE vote_type WHEN 'up' THEN 'down' ELSE 'up' END"
        " WHERE project_id = 10",
    ),
    ("no-op vote update", "UPDATE votes SET vote_type = vote_type"),
    (
        "upsert vote (insert + update paths)",
        "INSERT INTO votes (user_id, project_id, vote_type) VALUES (3,10,'up'),(3,12,'up')"
        " ON CONFLICT (user_id, project_id) DO UPDATE SET vote_type = EXCLUDED.vote_type",
    ),
    (
        "move a vote to another project",
        "UPDATE votes SET project_id = 11 WHERE user_id = 4 AND project_id = 10",
    ),
    (
        "move a vote to another user",
        "UPDATE votes SET user_id = 1 WHERE user_id = 5 AND project_id = 10",
    ),
    (
        "move several votes to other users (multi-row)",
        "UPDATE votes SET user_id = user_id + 3 WHERE project_id = 12 AND user_id IN (1, 2)",
    ),
    ("delete a vote", "DELETE FROM votes WHERE user_id = 1 AND project_id = 11"),
    # comments
    (
        "insert comments (multi-row)",
        "INSERT INTO comments (id, project_id, user_id, body) OVERRIDING SYSTEM VALUE VALUES"
        " (100,10,2,'x'),(101,10,3,'y'),(102,12,1,'z'),(103,13,1,'w'),(104,11,5,'v')",
    ),
    ("edit comment bodies (no-op for stats)", "UPDATE comments SET body = body || '!'"),
    ("move a comment to another project", "UPDATE comments SET project_id = 12 WHERE id = 100"),
    (
        "swap two comments' projects (multi-row)",
        "UPDATE comments SET project_id = CASE id WHEN 101 THEN 12 ELSE 10 END WHERE id IN (101, 102)",
    ),
    ("delete a comment", "DELETE FROM comments WHERE id = 104"),
    # projects with existing votes and comments
    (
        "soft delete a project with votes and comments",
        "UPDATE projects SET deleted_at = now() WHERE id = 10",
    ),
    (
        "vote on a soft-deleted project",
        "INSERT INTO votes (user_id, project_id, vote_type) VALUES (4, 10, 'up')",
    ),
    (
        "comment on a soft-deleted project",
        "INSERT INTO comments (project_id, user_id, body) VALUES (10, 4, 'late')",
    ),
    (
        "flip on a soft-deleted project",
        "UPDATE votes SET vote_type = 'down' WHERE project_id = 10 AND user_id = 1",
    ),
    ("restore the project", "UPDATE projects SET deleted_at = NULL WHERE id = 10"),
    ("move the project to another owner", "UPDATE projects SET owner_id = 4 WHERE id = 10"),
    (
        "move and soft delete in one update",
        "UPDATE projects SET owner_id = 5, deleted_at = now() WHERE id = 12",
    ),
    (
        "move a soft-deleted project and restore it",
        "UPDATE projects SET owner_id = 3, deleted_at = NULL WHERE id = 12",
    ),
    (
        "multi-row project update (swap owners, soft delete one)",
        "UPDATE projects SET owner_id = CASE id WHEN 10 THEN 3 ELSE 4 END,"
        " deleted_at = CASE id WHEN 11 THEN now() END WHERE id IN (10, 11, 12)",
    ),
    ("no-op project update", "UPDATE projects SET title = title, updated_at = updated_at"),
    ("restore all", "UPDATE projects SET deleted_at = NULL WHERE id <> 13"),
    ("hard delete a live project with votes and comments", "DELETE FROM projects WHERE id = 11"),
    ("hard delete a soft-deleted project with votes", "DELETE FROM projects WHERE id = 13"),
    (
        "a project for the id change",
        "INSERT INTO projects (id, owner_id, title) OVERRIDING SYSTEM VALUE VALUES (20, 2, 'p20')",
    ),
    ("change the id of a project nothing references", "UPDATE projects SET id = 21 WHERE id = 20"),
    # follows
    (
        "insert follows (multi-row)",
        "INSERT INTO follows (follower_id, followee_id) VALUES (2,1),(3,1),(4,1),(1,2),(5,3)",
    ),
    ("update a follow", "UPDATE follows SET followee_id = 4 WHERE follower_id = 5"),
    ("delete follows", "DELETE FROM follows WHERE followee_id = 1 AND follower_id IN (3, 4)"),
    ("follow oneself", "INSERT INTO follows (follower_id, followee_id) VALUES (2, 2)"),
    ("unfollow oneself", "DELETE FROM follows WHERE follower_id = 2 AND followee_id = 2"),
    # messages
    (
        "insert messages (multi-row, tied timestamps)",
        "INSERT INTO messages (id, sender_id, recipient_id, body, created_at) OVERRIDING SYSTEM VALUE"
        " VALUES (1000,1,2,'first','2024-01-01 10:00'),(1001,2,1,'second','2024-01-01 11:00'),"
        "(1002,1,2,'tie low id','2024-01-01 12:00'),(1003,2,1,'tie high id','2024-01-01 12:00'),"
        "(1004,3,1,repeat('long ', 40),'2024-01-01 09:00'),(1005,1,3,'hey','2024-01-01 08:00')",
    ),
    (
        "insert an older message (not the newest)",
        "INSERT INTO messages (id, sender_id, recipient_id, body, created_at) OVERRIDING SYSTEM VALUE"
        " VALUES (1006, 2, 1, 'old', '2023-12-31 10:00')",
    ),
    ("mark read", "UPDATE messages SET read_at = now() WHERE recipient_id = 1 AND sender_id = 2"),
    ("mark one unread", "UPDATE messages SET read_at = NULL WHERE id = 1001"),
    (
        "edit the body of the newest message (preview)",
        "UPDATE messages SET body = repeat('x', 150) WHERE id = 1003",
    ),
    ("edit the body of an older message", "UPDATE messages SET body = 'edited' WHERE id = 1000"),
    ("no-op message update", "UPDATE messages SET body = body"),
    ("delete the newest message of a conversation", "DELETE FROM messages WHERE id = 1003"),
    (
        "make an old message the newest (created_at change)",
        "UPDATE messages SET created_at = '2024-02-01' WHERE id = 1006",
    ),
    (
        "move a message to another conversation (recipient change)",
        "UPDATE messages SET recipient_id = 4 WHERE id = 1002",
    ),
    ("delete every message of a conversation", "DELETE FROM messages WHERE id IN (1004, 1005)"),
    (
        "first message of a new conversation",
        "INSERT INTO messages (sender_id, recipient_id, body) VALUES (5, 4, 'hello')",
    ),
    # messages to oneself: one conversation row (user = other), each message counted once
    (
        "notes to oneself (multi-row)",
        "INSERT INTO messages (id, sender_id, recipient_id, body, created_at) OVERRIDING SYSTEM VALUE"
        " VALUES (1010,3,3,'note','2024-01-02 10:00'),(1011,3,3,'later note','2024-01-02 11:00')",
    ),
    ("read one note to oneself", "UPDATE messages SET read_at = now() WHERE id = 1010"),
    (
        "move a note to oneself to another user",
        "UPDATE messages SET recipient_id = 1 WHERE id = 1010",
    ),
    ("send a message to oneself instead", "UPDATE messages SET recipient_id = 5 WHERE id = 1001"),
    ("delete the newest note to oneself", "DELETE FROM messages WHERE id = 1011"),
    # intro requests
    (
        "insert intros (multi-row)",
        "INSERT INTO intro_requests (id, requester_id, target_id, project_id, status)"
        " OVERRIDING SYSTEM VALUE VALUES (500,2,1,10,'pending'),(501,3,1,NULL,'pending'),"
        "(502,1,4,12,'pending'),(503,5,1,10,'declined')",
    ),
    (
        "accept an intro",
        "UPDATE intro_requests SET status = 'accepted', responded_at = now() WHERE id = 500",
    ),
    ("decline an intro", "UPDATE intro_requests SET status = 'declined' WHERE id = 501"),
    ("re-open an intro", "UPDATE intro_requests SET status = 'pending' WHERE id = 503"),
    ("no-op intro update", "UPDATE intro_requests SET message = 'm'"),
    (
        "change requester and target",
        "UPDATE intro_requests SET requester_id = 4, target_id = 2 WHERE id = 502",
    ),
    ("delete an intro", "DELETE FROM intro_requests WHERE id = 501"),
    ("delete the project of an intro (SET NULL)", "DELETE FROM projects WHERE id = 10"),
    # users going away
    (
        "delete a user with projects, votes, comments, follows, messages and intros",
        "DELETE FROM users WHERE id = 1",
    ),
    (
        "re-create a user with the deleted id",
        "INSERT INTO users (id, username, display_name, email) OVERRIDING SYSTEM VALUE"
        " VALUES (1, 'a2', 'A2', 'a2@x')",
    ),
    ("change the id of a user nothing references", "UPDATE users SET id = 99 WHERE id = 1"),
    ("delete several users at once", "DELETE FROM users WHERE id IN (2, 3)"),
]


def test_every_write_path_keeps_the_relations_exact(db):
    with (
        psycopg.connect(db, autocommit=True) as conn,
        psycopg.connect(db, autocommit=True) as check,
    ):
        for number, (name, statement) in enumerate(WRITE_PATHS):
            before = pending_deltas(conn)
            conn.execute(statement)
            assert_exact(check, f"after step {number}: {name}")
            if name.startswith("no-op"):
                assert pending_deltas(conn) == before, f"{name} wrote deltas"
            if number % 7 == 6:
                fold_all(conn, max_rows=3)
                assert pending_deltas(conn) == 0
                assert_exact(check, f"after folding at step {number}: {name}")
        # the deleted users' own rows are gone, not just hidden
        leftover = conn.execute(
            "SELECT (SELECT count(*) FROM user_dashboard_stats_base b"
            "        WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.id = b.user_id))"
            " + (SELECT count(*) FROM user_dashboard_stats_delta d"
            "        WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.id = d.user_id))"
            " + (SELECT count(*) FROM message_conversations_denorm c"
            "        WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.id = c.user_id))"
        ).fetchone()[0]
        assert leftover == 0


def test_new_users_get_a_zero_row_and_single_lookups_use_indexes(db):
    with psycopg.connect(db, autocommit=True) as conn:
        (uid,) = add_users(conn, 1)
        row = conn.execute(
            "SELECT * FROM user_dashboard_stats WHERE user_id = %s", (uid,)
        ).fetchall()
        assert row == [(uid, 0, 0, 0, 0, 0, 0, 0, 0, 0)]
        row = conn.execute(
            "SELECT * FROM intro_request_stats WHERE user_id = %s", (uid,)
        ).fetchall()
        assert row == [(uid, 0, 0, 0, 0, 0, 0, 0, 0)]
        conn.execute("SET enable_seqscan = off")  # only an index path passes, whatever the stats
        plan = "\n".join(
            r[0]
            for r in conn.execute(
                "EXPLAIN SELECT * FROM user_dashboard_stats WHERE user_id = %s", (uid,)
            )
        )
        assert "Seq Scan" not in plan, plan


def test_a_vote_writes_one_delta_row_and_project_changes_move_owner_totals(db):
    """The per-project design (phase1 sections 2 and 5): what each write costs in delta rows."""
    with psycopg.connect(db, autocommit=True) as conn:
        world = make_world(conn, users=4, projects=2)
        voter, project = world.users[3], world.projects[1]  # voter owns no project

        def delta_rows() -> tuple[int, int]:
            return conn.execute(
                "SELECT (SELECT count(*) FROM project_stats_delta),"
                " (SELECT count(*) FROM user_dashboard_stats_delta)"
            ).fetchone()

        steps = [
            ("vote", f"INSERT INTO votes VALUES ({voter}, {project}, 'up')", (1, 0)),
            (
                "flip",
                f"UPDATE votes SET vote_type = 'down' WHERE user_id = {voter}",
                (1, 0),
            ),
            (
                "same vote again",
                f"UPDATE votes SET vote_type = 'down' WHERE user_id = {voter}",
                (0, 0),
            ),
            (
                "comment",
                f"INSERT INTO comments (project_id, user_id, body) VALUES ({project}, {voter}, 'x')",
                (1, 0),
            ),
            (
                "edit comment",
                f"UPDATE comments SET body = 'y' WHERE project_id = {project}",
                (0, 0),
            ),
            # project changes move the owner totals: one owner-delta row per owner they touch
            ("soft delete", f"UPDATE projects SET deleted_at = now() WHERE id = {project}", (0, 1)),
            (
                "touch deleted_at",
                f"UPDATE projects SET deleted_at = now() WHERE id = {project}",
                (0, 0),
            ),
            ("restore", f"UPDATE projects SET deleted_at = NULL WHERE id = {project}", (0, 1)),
            (
                "edit",
                f"UPDATE projects SET title = 't', updated_at = now() WHERE id = {project}",
                (0, 0),
            ),
            ("owner move", f"UPDATE projects SET owner_id = {voter} WHERE id = {project}", (0, 2)),
            ("unvote", f"DELETE FROM votes WHERE user_id = {voter}", (1, 0)),
        ]
        for name, statement, (project_rows, user_rows) in steps:
            before = delta_rows()
            conn.execute(statement)
            after = delta_rows()
            assert (after[0] - before[0], after[1] - before[1]) == (project_rows, user_rows), name
        assert_exact(conn, "after the hot writes")
        stats = conn.execute(
            "SELECT projects_count, downvotes_received, comments_received FROM user_dashboard_stats"
            " WHERE user_id = %s",
            (voter,),
        ).fetchone()
        assert stats == (1, 0, 1)  # the moved project, its comment; the vote was withdrawn


def test_rolled_back_transaction_changes_nothing(db):
    rng = random.Random(7)
    with psycopg.connect(db) as conn:
        world = make_world(conn)
        populate(conn, rng, users=8, projects=5)
        conn.commit()
        snapshot = {
            t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall(), key=repr)
            for t in DENORM_TABLES.split(", ")
        }
        for _ in range(40):
            name = rng.choice(OP_NAMES)
            try:
                with conn.transaction():
                    run_op(conn, name, op_params(rng, world))
            except EXPECTED_ERRORS:
                pass
        conn.execute("DELETE FROM users WHERE id = %s", (world.users[0],))
        conn.rollback()
        after = {
            t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall(), key=repr)
            for t in DENORM_TABLES.split(", ")
        }
        conn.rollback()
        assert after == snapshot
    assert_exact(db)


def test_fold_keeps_the_relations_exact(db):
    rng = random.Random(11)
    with (
        psycopg.connect(db, autocommit=True) as conn,
        psycopg.connect(db, autocommit=True) as check,
    ):
        world = make_world(conn)
        populate(conn, rng, users=10, projects=6)
        assert pending_deltas(conn) > 50
        while pending_deltas(conn):
            folded = conn.execute(
                "SELECT opskit_fold_user_dashboard_deltas(7) + opskit_fold_intro_request_deltas(7)"
            ).fetchone()[0]
            assert 0 < folded <= 14
            assert_exact(check, "after a partial fold")
        # writes after a fold, then fold again
        for _ in range(60):
            with contextlib.suppress(EXPECTED_ERRORS):
                run_op(conn, rng.choice(OP_NAMES), op_params(rng, world))
        assert_exact(check, "writes after fold")
        fold_all(conn, max_rows=5)
        assert_exact(check, "second fold")
        # a fold inside a transaction that rolls back folds nothing (a comment always writes a
        # delta; a vote may repeat an existing one)
        conn.execute(OPERATIONS["comment"], op_params(rng, world))
        before = pending_deltas(conn)
        assert before > 0
        with conn.transaction(force_rollback=True):
            fold_all(conn)
        assert pending_deltas(conn) == before
        # while a backfill holds the advisory lock, folding returns 0 and waits for nothing
        with psycopg.connect(db) as backfill:
            backfill.execute("SELECT opskit_backfill_user_dashboard_stats(0, 1)")
            backfill.execute("SELECT opskit_backfill_intro_request_stats(0, 1)")
            assert conn.execute("SELECT opskit_fold_user_dashboard_deltas(100)").fetchone()[0] == 0
            assert conn.execute("SELECT opskit_fold_intro_request_deltas(100)").fetchone()[0] == 0
            backfill.rollback()
        assert fold_all(conn) > 0
        assert_exact(check, "after all folds")


def test_backfill_on_preexisting_data(base_db_url):
    rng = random.Random(3)
    with psycopg.connect(base_db_url) as conn:
        populate(conn, rng, users=30, projects=15)
        # a user with no rows at all, and a conversation with one message
        add_users(conn, 1)
        conn.commit()
    apply_phases(base_db_url)
    assert_exact(base_db_url, "after phase1 + backfill")
    with psycopg.connect(base_db_url, autocommit=True) as conn:
        # the per-batch functions are reruns-safe and batch boundaries do not matter
        lo, hi = conn.execute("SELECT min(id), max(id) FROM users").fetchone()
        for start in range(lo - 3, hi + 4, 4):
            conn.execute("SELECT opskit_backfill_user_dashboard_stats(%s, %s)", (start, start + 4))
            conn.execute("SELECT opskit_backfill_intro_request_stats(%s, %s)", (start, start + 4))
            conn.execute("SELECT opskit_backfill_message_conversations(%s, %s)", (start, start + 4))
        assert_exact(conn, "after re-running the batches")
        with pytest.raises(psycopg.errors.RaiseException), conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            conn.execute("SELECT opskit_backfill_user_dashboard_stats(0, 100)")


def test_rollback_files_drop_every_phase1_object(db):
    with psycopg.connect(db) as conn:
        for name in ("phase1_backfill_data.down", "phase1_denormalized_tables.down"):
            conn.execute((MIGRATIONS / f"{name}.sql").read_text())
        conn.commit()
        left = conn.execute(
            "SELECT (SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'trg_opskit_%')"
            " + (SELECT count(*) FROM pg_proc WHERE proname LIKE 'opskit_%')"
            " + (SELECT count(*) FROM pg_class WHERE relname IN ('user_dashboard_stats',"
            "    'intro_request_stats', 'message_conversations_denorm')"
            "    OR relname LIKE 'user_dashboard_stats_%' OR relname LIKE 'intro_request_stats_%'"
            "    OR relname LIKE 'project_stats%')"
        ).fetchone()[0]
        assert left == 0
        # phase0 is safe on this now clean database, and phase1 applies again
        conn.execute((MIGRATIONS / "phase0_cleanup.sql").read_text())
        conn.commit()
    apply_phases(db)
    assert_exact(db)


# ------------------------------------------------------------------ concurrency


def test_concurrent_writers_keep_the_relations_exact(db):
    with psycopg.connect(db, autocommit=True) as conn:
        world = make_world(conn, users=6, projects=4)
        populate(conn, random.Random(5), users=4, projects=2)
    mismatches: list[str] = []
    folds = 0
    checks = 0

    writers = Writers(db, world, threads=8, ops_each=400, seed=100)
    with writers, psycopg.connect(db, autocommit=True) as side:
        while any(t.is_alive() for t in writers.threads):
            folds += side.execute(
                "SELECT opskit_fold_user_dashboard_deltas(40) + opskit_fold_intro_request_deltas(40)"
            ).fetchone()[0]
            problems = diff_all(side)  # any snapshot, taken while writers commit
            checks += 1
            if problems:
                mismatches.append("\n".join(problems.values()))
            time.sleep(0.02)
    assert not writers.errors, writers.errors
    assert not mismatches, mismatches[0]
    assert writers.deadlocks == 0, "\n".join(writers.deadlock_details)
    print(
        f"{writers.committed} writes, {writers.rejected} rejected, {checks} checks, {folds} folded"
    )
    assert writers.committed > 2500
    assert checks > 3 and folds > 0
    assert_exact(db, "after the writers finished")
    with psycopg.connect(db, autocommit=True) as conn:
        fold_all(conn)
    assert_exact(db, "after the final fold")


PROJECT_RACE_OPS = (
    "vote_hot",
    "vote",
    "unvote_hot",
    "flip",
    "comment",
    "uncomment",
    "soft_delete",
    "restore",
    "move_project",
    "touch_project",
    "new_project",
    "drop_project",
    "new_user",
    "delete_user",
)


def _multi_project_transactions(url: str, world, stop: threading.Event, out: dict) -> None:
    """Transactions that change several projects (owner moves, soft deletes, restores, in
    random order) and vote between them: each holds some projects' rows while it waits for
    others, the case where a lock shared by owners could close a deadlock cycle."""
    rng = random.Random(77)
    with psycopg.connect(url) as conn:
        while not stop.is_set():
            try:
                for _ in range(rng.randint(2, 4)):
                    name = rng.choice(("move_project", "soft_delete", "restore", "vote"))
                    conn.execute(OPERATIONS[name], op_params(rng, world))
                conn.commit()
                out["committed"] += 1
            except psycopg.errors.DeadlockDetected as err:
                conn.rollback()
                out["deadlocks"].append(str(err))
            except EXPECTED_ERRORS:
                conn.rollback()


def test_project_moves_racing_votes_and_folds_stay_exact(db):
    """Owner totals (phase1 section 5) under the races that matter: votes pending while their
    project is soft-deleted, moved or restored, folds running all the time (small batches),
    multi-project transactions; exact in every snapshot, and no deadlock anywhere."""
    with psycopg.connect(db, autocommit=True) as conn:
        world = make_world(conn, users=6, projects=4)
    mismatches: list[str] = []
    folds = checks = 0
    stop = threading.Event()
    multi = {"committed": 0, "deadlocks": []}
    mover = threading.Thread(target=_multi_project_transactions, args=(db, world, stop, multi))
    writers = Writers(db, world, threads=6, ops_each=350, seed=400, ops=PROJECT_RACE_OPS)
    with writers, psycopg.connect(db, autocommit=True) as side:
        mover.start()
        try:
            while any(t.is_alive() for t in writers.threads):
                folds += side.execute("SELECT opskit_fold_user_dashboard_deltas(9)").fetchone()[0]
                problems = diff_all(side)
                checks += 1
                if problems:
                    mismatches.append("\n".join(problems.values()))
        finally:
            stop.set()
            mover.join()
    assert not writers.errors, writers.errors
    assert not mismatches, mismatches[0]
    assert writers.deadlocks == 0, "\n".join(writers.deadlock_details)
    assert not multi["deadlocks"], multi["deadlocks"][0]
    assert multi["committed"] > 20
    moved = sum(writers.ops_done[n] for n in ("soft_delete", "restore", "move_project"))
    assert moved > 150 and writers.ops_done["vote_hot"] > 100
    assert checks > 10 and folds > 0
    with psycopg.connect(db, autocommit=True) as conn:
        fold_all(conn, max_rows=7)
        assert pending_deltas(conn) == 0
        # the owner totals really are folded: base rows carry them, nothing is left pending
        assert (
            conn.execute("SELECT sum(projects_count) FROM user_dashboard_stats_base").fetchone()[0]
            == conn.execute("SELECT count(*) FROM projects WHERE deleted_at IS NULL").fetchone()[0]
        )
    assert_exact(db, "after the final fold")


def test_a_heavy_owner_reads_as_cheaply_as_a_typical_user(db):
    """user_dashboard_stats for an owner of 3,000 projects reads no more pages than for an
    owner of one (generic plan, as a prepared statement gets): nothing sums per project."""
    with psycopg.connect(db, autocommit=True) as conn:
        heavy, typical, voter = add_users(conn, 3)
        conn.execute(
            "INSERT INTO projects (owner_id, title) SELECT %s, 'p' || g"
            " FROM generate_series(1, 3000) g",
            (heavy,),
        )
        conn.execute("INSERT INTO projects (owner_id, title) VALUES (%s, 'one')", (typical,))
        conn.execute(
            "INSERT INTO votes (user_id, project_id, vote_type) SELECT %s, id, 'up' FROM projects",
            (voter,),
        )
        fold_all(conn, max_rows=10_000)
        conn.execute("VACUUM user_dashboard_stats_delta, project_stats_delta")  # as the daemon
        conn.execute(  # a few pending deltas, of both owners' projects
            "INSERT INTO comments (project_id, user_id, body)"
            " SELECT id, %s, 'c' FROM projects WHERE id %% 500 = 0 OR owner_id = %s",
            (voter, typical),
        )
        conn.execute("ANALYZE")
        conn.execute("SET plan_cache_mode = force_generic_plan")
        conn.execute(
            "PREPARE stats(bigint) AS SELECT * FROM user_dashboard_stats WHERE user_id = $1"
        )

        def pages(user_id: int) -> tuple[int, str]:
            plan = "\n".join(
                r[0]
                for r in conn.execute(
                    f"EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, TIMING OFF) EXECUTE stats({user_id})"
                )
            )
            hits = int(re.search(r"Buffers: shared hit=(\d+)", plan).group(1))  # the top node
            return hits, plan

        heavy_pages, plan = pages(heavy)
        typical_pages, _ = pages(typical)
        assert heavy_pages <= typical_pages + 20, plan
        row = conn.execute(f"EXECUTE stats({heavy})").fetchone()
        assert row[1:5] == (3000, 3000, 0, 6)
    assert_exact(db)


def test_concurrent_admin_statements_stay_exact(db):
    """With cross-project moves and multi-row updates of a project's votes and comments in the
    mix, a deadlock may abort (and retry) a transaction, but the relations stay exact."""
    with psycopg.connect(db, autocommit=True) as conn:
        world = make_world(conn, users=6, projects=4)
    with Writers(db, world, threads=6, ops_each=200, seed=300, admin=True) as writers:
        writers.join()
    assert not writers.errors, writers.errors
    assert writers.committed > 900
    assert_exact(db, f"after concurrent admin statements ({writers.deadlocks} deadlocks retried)")


def batch(conn: psycopg.Connection, statement: str, bounds: tuple[int, int]) -> None:
    """One backfill batch as `opskit backfill` runs it: it gives way (lock_timeout below
    deadlock_timeout) and is retried, so an app write is never the one that waits it out."""
    while True:
        try:
            with conn.transaction():
                conn.execute("SET LOCAL lock_timeout = '500ms'")
                conn.execute(statement, bounds)
            return
        except psycopg.errors.LockNotAvailable:
            continue


def test_backfill_while_the_app_writes(base_db_url):
    rng = random.Random(9)
    with psycopg.connect(base_db_url, autocommit=True) as conn:
        world = make_world(conn, users=6, projects=4)
        populate(conn, rng, users=40, projects=12)
    apply_phases(base_db_url, ("phase0_cleanup", "phase1_denormalized_tables"))
    with Writers(base_db_url, world, threads=4, ops_each=None, seed=200, folder=True) as writers:
        time.sleep(0.05)
        # the whole file (batch by batch, like `opskit migrate`) while writes go on
        apply_phases(base_db_url, ("phase1_backfill_data",))
        # then the batches again, one transaction per batch, like `opskit backfill`
        with psycopg.connect(base_db_url, autocommit=True) as conn:
            lo, hi = conn.execute("SELECT min(id), max(id) FROM users").fetchone()
            for start in range(lo, hi + 1, 5):
                bounds = (start, start + 5)
                batch(conn, "SELECT opskit_backfill_user_dashboard_stats(%s, %s)", bounds)
                batch(conn, "SELECT opskit_backfill_intro_request_stats(%s, %s)", bounds)
                batch(conn, "SELECT opskit_backfill_message_conversations(%s, %s)", bounds)
                conn.execute("SELECT opskit_fold_user_dashboard_deltas(30)")
                time.sleep(0.01)
            # the busiest users again and again, to meet writes on the same rows
            busy = (min(world.users), max(world.users) + 1)
            for _ in range(25):
                batch(conn, "SELECT opskit_backfill_message_conversations(%s, %s)", busy)
                batch(conn, "SELECT opskit_backfill_user_dashboard_stats(%s, %s)", busy)
                batch(conn, "SELECT opskit_backfill_intro_request_stats(%s, %s)", busy)
        assert all(t.is_alive() for t in writers.threads), writers.errors
    assert not writers.errors, writers.errors
    assert writers.deadlocks == 0, writers.deadlock_details
    assert writers.committed > 100
    assert_exact(base_db_url, "after the backfill raced the writers")


# ------------------------------------------------------------------ hypothesis: interleavings


class Session:
    """One connection driven from its own thread; statements queue up while it is blocked."""

    def __init__(self, url: str):
        self.conn = psycopg.connect(url)
        self.jobs: queue.Queue = queue.Queue()
        self.pending = 0
        self.cv = threading.Condition()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            sql, params = job
            try:
                if sql == "COMMIT":
                    self.conn.commit()
                elif sql == "ROLLBACK":
                    self.conn.rollback()
                else:
                    self.conn.execute(sql, params)
            except psycopg.Error:
                self.conn.rollback()  # the transaction is lost, like an app request that failed
            finally:
                with self.cv:
                    self.pending -= 1
                    self.cv.notify_all()

    def submit(self, sql: str, params: dict | None = None, wait: float = 0.1) -> None:
        with self.cv:
            self.pending += 1
        self.jobs.put((sql, params))
        with self.cv:
            self.cv.wait_for(lambda: self.pending == 0, timeout=wait)

    def finish(self) -> None:
        with self.cv:
            assert self.cv.wait_for(lambda: self.pending == 0, timeout=30), "session hangs"
        self.jobs.put(None)
        self.thread.join(5)
        self.conn.close()


step_strategy = st.tuples(
    st.integers(0, 3),  # session
    st.sampled_from(OP_NAMES + ["COMMIT", "COMMIT", "ROLLBACK"]),
    st.integers(0, 2**32 - 1),  # parameters
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(sessions=st.integers(2, 4), steps=st.lists(step_strategy, min_size=1, max_size=14))
def test_random_interleavings_keep_the_relations_exact(db, sessions, steps):
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {APP_TABLES}, {DENORM_TABLES} RESTART IDENTITY")
        world = make_world(conn, users=4, projects=3)
        conn.execute(OPERATIONS["vote_hot"], op_params(random.Random(1), world))
        conn.execute(OPERATIONS["message"], op_params(random.Random(2), world))
        conn.execute(OPERATIONS["comment"], op_params(random.Random(3), world))
        conn.execute(OPERATIONS["intro"], op_params(random.Random(4), world))
        open_sessions = [Session(db) for _ in range(sessions)]
        try:
            for index, name, seed in steps:
                session = open_sessions[index % sessions]
                if name in ("COMMIT", "ROLLBACK"):
                    session.submit(name)
                elif name in TRANSACTIONS:
                    for part in TRANSACTIONS[name]:
                        session.submit(OPERATIONS[part], op_params(random.Random(seed), world))
                else:
                    session.submit(OPERATIONS[name], op_params(random.Random(seed), world))
                assert_exact(conn, f"after {name}")  # a snapshot at any moment is exact
        finally:
            for session in open_sessions:  # commit all first: one may wait for another's locks
                session.submit("COMMIT", wait=0)
            for session in open_sessions:
                session.finish()
        assert_exact(conn, "after all sessions committed")
        fold_all(conn)
        assert_exact(conn, "after folding")
