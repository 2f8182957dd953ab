"""phase2_materialized_views and phase3_search_and_forums against real PostgreSQL.

Each view is compared with an independent query on the app tables (correlated subqueries and
Python, not a copy of the view's SQL), before and after writes applied per key from the change
log. Neither phase needs phase1, so phase1 is never applied here.
"""

from __future__ import annotations

import re
from collections import defaultdict
from datetime import UTC
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from opskit.core.settings import Settings
from opskit.engine import migrations, refresh

MIGRATIONS = Path(__file__).parents[2] / "migrations"

PHASE2_VIEWS = (
    "mv_feed_projects",
    "mv_leaderboard_projects",
    "mv_leaderboard_builders",
    "mv_chains_discovery",
    "mv_project_details",
)
PHASE3_VIEWS = ("mv_search_index", "mv_chain_posts", "mv_investors_directory")
VIEWS = PHASE2_VIEWS + PHASE3_VIEWS

MONITORING_QUERIES = (
    "SELECT view_name, status, refresh_requested_at, last_refresh_duration_ms "
    "FROM mv_refresh_queue ORDER BY refresh_requested_at DESC LIMIT 10;",
    "SELECT view_name, AVG(duration_ms)::INT as avg_duration_ms, COUNT(*) as refresh_count "
    "FROM mv_refresh_log WHERE refresh_started_at > CURRENT_TIMESTAMP - INTERVAL '24 hours' "
    "AND status = 'completed' GROUP BY view_name;",
)


def apply(url: str, file: str) -> None:
    """Run a migration file's whole text in one transaction, as the runner's transaction does."""
    text = (MIGRATIONS / file).read_text()
    with psycopg.connect(url) as conn:
        conn.execute(text)


def apply_phase1(url: str) -> None:
    """Phase 1 through the runner (its backfill commits per batch): phase 2 reads its
    user_dashboard_stats (the builders' leaderboard)."""
    migrations.migrate(url, to="phase1_backfill_data")


@pytest.fixture
def db(tiny_db_url: str) -> str:
    apply_phase1(tiny_db_url)
    apply(tiny_db_url, "phase2_materialized_views.sql")
    apply(tiny_db_url, "phase3_search_and_forums.sql")
    return tiny_db_url


def rows(conn: psycopg.Connection, query: str) -> list[tuple]:
    return conn.execute(query).fetchall()


def refresh_all(url: str) -> None:
    """Apply every pending change to every view (what the daemon does every poll)."""
    runs = refresh.refresh(url, Settings.from_env({}), all_views=True)
    assert {run.status for run in runs} <= {"completed", "idle"}


# ------------------------------------------------------------------ the truth, computed apart

PROJECT_COUNTS = """
    SELECT p.*,
           (SELECT count(*) FROM votes v WHERE v.project_id = p.id AND v.vote_type = 'up') AS up,
           (SELECT count(*) FROM votes v WHERE v.project_id = p.id AND v.vote_type = 'down') AS down,
           (SELECT count(*) FROM comments c WHERE c.project_id = p.id) AS n_comments
    FROM projects p WHERE p.deleted_at IS NULL
"""


def in_rank_order(items: list[tuple], score_at: int, id_at: int) -> list[tuple]:
    """The leaderboards' order (score desc, ties lower id first): a row's place is its rank."""
    return sorted(items, key=lambda r: (-r[score_at], r[id_at]))


def truth_feed(conn):
    """The counts, and trending scored for the one instant the last refresh stored."""
    ((scored_at,),) = rows(conn, "SELECT DISTINCT scored_at FROM mv_feed_projects")
    items = rows(
        conn,
        f"""WITH p AS ({PROJECT_COUNTS})
        SELECT p.id, p.title, p.tagline, p.tags, p.owner_id, u.username, u.display_name,
               p.chain_id, c.slug, c.name, p.created_at, p.up, p.down, p.up - p.down, p.n_comments
        FROM p JOIN users u ON u.id = p.owner_id LEFT JOIN chains c ON c.id = p.chain_id
        ORDER BY p.id""",
    )
    return [
        (*r, scored_at, pytest.approx(trending(r[13], r[10], scored_at), rel=1e-12)) for r in items
    ]


def trending(score: int, created_at, as_of) -> float:
    """docs/interface.md §7: (upvotes - downvotes) / power(hours_since_created + 2, 1.8)."""
    hours = max((as_of - created_at).total_seconds() / 3600, 0)
    return score / (hours + 2) ** 1.8


def truth_leaderboard_projects(conn):
    items = rows(
        conn,
        f"""WITH p AS ({PROJECT_COUNTS})
        SELECT p.id, p.title, p.owner_id, u.username, p.up, p.down, p.up - p.down, p.n_comments
        FROM p JOIN users u ON u.id = p.owner_id""",
    )
    return in_rank_order(items, score_at=6, id_at=0)


def truth_leaderboard_builders(conn):
    items = rows(
        conn,
        """SELECT u.id, u.username, u.display_name,
               (SELECT count(*) FROM projects p WHERE p.owner_id = u.id AND p.deleted_at IS NULL),
               (SELECT count(*) FROM votes v JOIN projects p ON p.id = v.project_id
                 WHERE p.owner_id = u.id AND p.deleted_at IS NULL AND v.vote_type = 'up') AS up,
               (SELECT count(*) FROM votes v JOIN projects p ON p.id = v.project_id
                 WHERE p.owner_id = u.id AND p.deleted_at IS NULL AND v.vote_type = 'down') AS down,
               (SELECT count(*) FROM follows f WHERE f.followee_id = u.id)
        FROM users u
        WHERE EXISTS (SELECT 1 FROM projects p WHERE p.owner_id = u.id AND p.deleted_at IS NULL)""",
    )
    items = [(i, n, d, pc, up, down, up - down, fol) for i, n, d, pc, up, down, fol in items]
    return in_rank_order(items, score_at=6, id_at=0)


def truth_chains(conn):
    return rows(
        conn,
        """SELECT c.id, c.slug, c.name, c.description, c.created_at,
               (SELECT count(*) FROM chain_members m WHERE m.chain_id = c.id),
               (SELECT count(*) FROM projects p WHERE p.chain_id = c.id AND p.deleted_at IS NULL),
               (SELECT count(*) FROM chain_posts cp WHERE cp.chain_id = c.id),
               greatest(c.created_at,
                        (SELECT max(created_at) FROM chain_posts cp WHERE cp.chain_id = c.id),
                        (SELECT max(r.created_at) FROM chain_post_replies r
                           JOIN chain_posts cp ON cp.id = r.post_id WHERE cp.chain_id = c.id),
                        (SELECT max(created_at) FROM projects p
                          WHERE p.chain_id = c.id AND p.deleted_at IS NULL))
        FROM chains c ORDER BY c.id""",
    )


def truth_project_details(conn):
    comments = defaultdict(list)
    for cid, project_id, user_id, username, body, created_at in rows(
        conn,
        "SELECT c.id, c.project_id, c.user_id, u.username, c.body, c.created_at "
        "FROM comments c JOIN users u ON u.id = c.user_id",
    ):
        comments[project_id].append((created_at, cid, user_id, username, body))
    result = []
    for row in rows(
        conn,
        f"""WITH p AS ({PROJECT_COUNTS})
        SELECT p.id, p.title, p.tagline, p.description, p.tags, p.created_at, p.updated_at,
               p.owner_id, u.username, u.display_name, p.chain_id, c.slug, c.name,
               p.up, p.down, p.up - p.down, p.n_comments
        FROM p JOIN users u ON u.id = p.owner_id LEFT JOIN chains c ON c.id = p.chain_id
        ORDER BY p.id""",
    ):
        newest = sorted(comments[row[0]], key=lambda c: (c[0], c[1]), reverse=True)[:5]
        recent = [
            {
                "id": cid,
                "user_id": user_id,
                "username": username,
                "body": body,
                "created_at": created_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            }
            for created_at, cid, user_id, username, body in newest
        ]
        result.append((*row, recent))
    return result


def words_of(text: str) -> list[str]:
    """Search's words of a text: its distinct maximal runs of letters and digits, sorted."""
    return sorted(set(re.findall(r"[^\W_]+", text)))


def truth_search(conn):
    def document(*parts):
        return " ".join(p for p in parts if p is not None).lower()

    def entry(kind, entity_id, title, subtitle, text, popularity):
        words, name_words = words_of(text), words_of(title.lower())
        return (kind, entity_id, title, subtitle, text, words, name_words, popularity)

    result = []
    for pid, title, tagline, tags, up, down in rows(
        conn, f"SELECT id, title, tagline, tags, up, down FROM ({PROJECT_COUNTS}) p"
    ):
        result.append(
            entry(
                "project", pid, title, tagline, document(title, tagline, " ".join(tags)), up - down
            )
        )
    for uid, username, display_name, bio, followers in rows(
        conn,
        "SELECT u.id, u.username, u.display_name, u.bio, "
        "(SELECT count(*) FROM follows f WHERE f.followee_id = u.id) FROM users u",
    ):
        result.append(
            entry(
                "builder",
                uid,
                display_name,
                username,
                document(username, display_name, bio),
                followers,
            )
        )
    for cid, name, slug, description, members in rows(
        conn,
        "SELECT c.id, c.name, c.slug, c.description, "
        "(SELECT count(*) FROM chain_members m WHERE m.chain_id = c.id) FROM chains c",
    ):
        result.append(entry("chain", cid, name, slug, document(name, slug, description), members))
    return sorted(result, key=lambda r: (r[0], r[1]))


def truth_chain_posts(conn):
    return rows(
        conn,
        """SELECT cp.id, cp.chain_id, c.slug, cp.author_id, u.username, cp.title, left(cp.body, 200),
               cp.created_at,
               (SELECT count(*) FROM chain_post_replies r WHERE r.post_id = cp.id),
               (SELECT max(created_at) FROM chain_post_replies r WHERE r.post_id = cp.id),
               coalesce((SELECT max(created_at) FROM chain_post_replies r WHERE r.post_id = cp.id),
                        cp.created_at)
        FROM chain_posts cp JOIN chains c ON c.id = cp.chain_id JOIN users u ON u.id = cp.author_id
        ORDER BY cp.id""",
    )


def truth_investors(conn):
    result = []
    for row in rows(
        conn,
        """SELECT u.id, u.username, u.display_name, ip.firm, ip.check_size_min, ip.check_size_max,
               ip.focus,
               (SELECT count(*) FROM intro_requests i WHERE i.target_id = u.id),
               (SELECT count(*) FROM intro_requests i WHERE i.target_id = u.id AND status = 'accepted'),
               (SELECT count(*) FROM intro_requests i WHERE i.target_id = u.id AND status <> 'pending'),
               (SELECT count(*) FROM follows f WHERE f.followee_id = u.id)
        FROM users u LEFT JOIN investor_profiles ip ON ip.user_id = u.id
        WHERE u.role = 'investor' ORDER BY u.id""",
    ):
        *head, received, accepted, answered, followers = row
        rate = (
            conn.execute("SELECT %s::numeric / %s", (accepted, answered)).fetchone()[0]
            if answered
            else None
        )
        result.append((*head, received, accepted, rate, followers))
    return result


TRUTH = {
    "mv_feed_projects": (truth_feed, "project_id"),
    "mv_leaderboard_projects": (truth_leaderboard_projects, "score DESC, project_id"),
    "mv_leaderboard_builders": (truth_leaderboard_builders, "score DESC, user_id"),
    "mv_chains_discovery": (truth_chains, "chain_id"),
    "mv_project_details": (truth_project_details, "project_id"),
    "mv_search_index": (truth_search, "kind, entity_id"),
    "mv_chain_posts": (truth_chain_posts, "post_id"),
    "mv_investors_directory": (truth_investors, "user_id"),
}


def assert_views_equal_truth(url: str) -> None:
    with psycopg.connect(url) as conn:
        for view, (truth, order) in TRUTH.items():
            actual = [tuple(r) for r in rows(conn, f"SELECT * FROM {view} ORDER BY {order}")]
            expected = [tuple(r) for r in truth(conn)]
            assert actual, f"{view} is empty"
            assert actual == expected, view
        assert_word_index_equals(conn, truth_search(conn))


def assert_word_index_equals(conn, search_rows: list[tuple]) -> None:
    """search_words and search_postings are the words of mv_search_index's rows."""
    documents: dict[str, int] = defaultdict(int)
    postings = set()
    for kind, entity_id, _title, _subtitle, _text, words, name_words, popularity in search_rows:
        for word in words:
            documents[word] += 1
            postings.add((word, word in name_words, popularity, kind, entity_id))
    assert dict(rows(conn, "SELECT word, documents FROM search_words")) == documents
    actual = rows(conn, "SELECT word, in_name, popularity, kind, entity_id FROM search_postings")
    assert len(actual) == len(postings) and set(map(tuple, actual)) == postings


def logged(conn) -> list[tuple[str, int]]:
    """The change log's (entity, entity_id) rows, sorted."""
    return sorted(rows(conn, "SELECT entity, entity_id FROM mv_change_log"))


def routes(conn) -> dict[str, set[str]]:
    found: dict[str, set[str]] = defaultdict(set)
    for entity, view in rows(conn, "SELECT entity, view_name FROM mv_change_routes"):
        found[entity].add(view)
    return found


# ------------------------------------------------------------------ tests


def test_views_are_tables_built_with_a_plain_unique_index(db):
    with psycopg.connect(db) as conn:
        for view in VIEWS:
            kind, count = conn.execute(
                f"SELECT relkind, (SELECT count(*) FROM {view}) FROM pg_class "
                "WHERE oid = %s::regclass",
                (view,),
            ).fetchone()
            assert kind == "r" and count > 0, view
            plain_unique = conn.execute(
                "SELECT count(*) FROM pg_index WHERE indrelid = %s::regclass AND indisunique "
                "AND indexprs IS NULL AND indpred IS NULL",
                (view,),
            ).fetchone()[0]
            assert plain_unique >= 1, view
        # search reads the word index: the dictionary's trigrams and the postings in rank order
        assert rows(
            conn,
            "SELECT tablename, indexname FROM pg_indexes WHERE tablename LIKE 'search_%%' "
            "AND (indexdef LIKE '%%gin (word gin_trgm_ops)%%' OR indexname LIKE '%%rank%%') "
            "ORDER BY 1",
        ) == [
            ("search_postings", "search_postings_word_rank_idx"),
            ("search_words", "search_words_word_trgm_idx"),
        ]
        # built once by the phases: nothing is pending, nothing was logged as a batch
        assert rows(conn, "SELECT count(*) FROM mv_pending_changes") == [(0,)]
        assert rows(conn, "SELECT count(*) FROM mv_refresh_log") == [(0,)]


def test_views_equal_the_truth_before_and_after_writes(db):
    assert_views_equal_truth(db)
    with psycopg.connect(db) as conn:
        project = conn.execute(
            "SELECT id FROM projects WHERE deleted_at IS NULL ORDER BY id LIMIT 1"
        ).fetchone()[0]
        voter = conn.execute(
            "SELECT id FROM users u WHERE NOT EXISTS "
            "(SELECT 1 FROM votes v WHERE v.user_id = u.id AND v.project_id = %s) ORDER BY id LIMIT 1",
            (project,),
        ).fetchone()[0]
        conn.execute(
            "INSERT INTO votes (user_id, project_id, vote_type) VALUES (%s, %s, 'up')",
            (voter, project),
        )
        conn.execute(  # a flip
            "UPDATE votes SET vote_type = CASE vote_type WHEN 'up' THEN 'down' ELSE 'up' END "
            "WHERE (user_id, project_id) = (SELECT user_id, project_id FROM votes "
            "WHERE project_id <> %s ORDER BY user_id, project_id LIMIT 1)",
            (project,),
        )
        conn.execute(
            "DELETE FROM votes WHERE (user_id, project_id) = (SELECT user_id, project_id FROM votes "
            "WHERE project_id <> %s ORDER BY user_id DESC, project_id LIMIT 1)",
            (project,),
        )
        conn.execute(  # soft-delete the top project (leaderboards, builders, search shift)
            "UPDATE projects SET deleted_at = now() WHERE id = (SELECT project_id FROM "
            "mv_leaderboard_projects ORDER BY score DESC, project_id LIMIT 1)"
        )
        conn.execute(
            "INSERT INTO comments (project_id, user_id, body) VALUES (%s, %s, 'fresh comment')",
            (project, voter),
        )
        post = conn.execute(
            "INSERT INTO chain_posts (chain_id, author_id, title, body) "
            "SELECT min(id), %s, 'new post', repeat('x', 300) FROM chains RETURNING id",
            (voter,),
        ).fetchone()[0]
        conn.execute(
            "INSERT INTO chain_post_replies (post_id, author_id, body) VALUES (%s, %s, 'reply')",
            (post, voter),
        )
        conn.execute(
            "UPDATE intro_requests SET status = 'accepted', responded_at = now() "
            "WHERE id = (SELECT min(id) FROM intro_requests WHERE status = 'pending')"
        )
        conn.execute(
            "INSERT INTO follows (follower_id, followee_id) SELECT %s, u.id FROM users u "
            "WHERE u.role = 'investor' AND u.id <> %s ON CONFLICT DO NOTHING",
            (voter, voter),
        )
    refresh_all(db)
    assert_views_equal_truth(db)


def test_search_words_come_and_go_with_the_maintenance_of_mv_search_index(db):
    """A new project's words enter the dictionary with the view's next batch, not before; once no
    document uses a word it leaves; a changed title moves the word in or out of the name."""

    def dictionary(conn, word):
        return rows(conn, f"SELECT documents FROM search_words WHERE word = '{word}'")

    with psycopg.connect(db, autocommit=True) as conn:
        owner = rows(conn, "SELECT min(id) FROM users")[0][0]
        project = conn.execute(
            "INSERT INTO projects (owner_id, title, tagline, tags) "
            "VALUES (%s, 'Quokkaish Relay', 'wombatish tools', '{}') RETURNING id",
            (owner,),
        ).fetchone()[0]
        assert dictionary(conn, "quokkaish") == []
        refresh_all(db)
        assert dictionary(conn, "quokkaish") == [(1,)] and dictionary(conn, "wombatish") == [(1,)]
        assert rows(
            conn,
            "SELECT in_name FROM search_postings WHERE word IN ('quokkaish', 'wombatish')"
            " ORDER BY word",
        ) == [(True,), (False,)]
        conn.execute("UPDATE projects SET title = 'Wombatish Relay' WHERE id = %s", (project,))
        refresh_all(db)
        assert dictionary(conn, "quokkaish") == []
        assert rows(conn, "SELECT in_name FROM search_postings WHERE word = 'wombatish'") == [
            (True,)
        ]
        conn.execute("UPDATE projects SET deleted_at = now() WHERE id = %s", (project,))
        refresh_all(db)
        assert dictionary(conn, "wombatish") == []
        assert rows(conn, "SELECT count(*) FROM search_postings WHERE word = 'wombatish'") == [(0,)]
    assert_views_equal_truth(db)


def test_a_refresh_without_source_changes_rewrites_no_row(db):
    def locations(conn):
        return {v: rows(conn, f"SELECT ctid::text FROM {v} ORDER BY 1") for v in VIEWS}

    with psycopg.connect(db) as conn:
        before = locations(conn)
    refresh_all(db)
    with psycopg.connect(db) as conn:
        assert locations(conn) == before
    assert_views_equal_truth(db)


def test_writes_log_what_they_changed_and_nothing_else(db):
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("DELETE FROM mv_change_log")
        inserted = conn.execute(  # a multi-row insert logs each row's project
            "INSERT INTO votes (user_id, project_id, vote_type) "
            "SELECT u.id, p.id, 'up' FROM users u CROSS JOIN "
            "(SELECT id FROM projects ORDER BY id DESC LIMIT 3) p "
            "WHERE NOT EXISTS (SELECT 1 FROM votes v WHERE v.user_id = u.id AND v.project_id = p.id) "
            "AND u.id <= 10 RETURNING project_id"
        ).fetchall()
        assert logged(conn) == sorted(("project_votes", p) for (p,) in inserted)
        conn.execute("DELETE FROM mv_change_log")
        # a statement that changes no row logs nothing; nor does a rolled-back write
        conn.execute("DELETE FROM follows WHERE follower_id = -1")
        conn.execute("UPDATE votes SET created_at = created_at WHERE false")
        with pytest.raises(psycopg.errors.DivisionByZero), conn.transaction():
            conn.execute("DELETE FROM follows WHERE follower_id = 1")
            conn.execute("SELECT 1 / 0")
        conn.execute("UPDATE messages SET read_at = now() WHERE id = 1")  # no view reads it
        assert logged(conn) == []
        # a move logs both ends of the link it moves
        old_owner, old_chain = conn.execute(
            "SELECT owner_id, chain_id FROM projects WHERE id = 2"
        ).fetchone()
        conn.execute("UPDATE projects SET owner_id = 7, chain_id = NULL WHERE id = 2")
        assert set(logged(conn)) == {
            ("project", 2),
            ("owner", old_owner),
            ("owner", 7),
            *([("chain_activity", old_chain)] if old_chain else []),
        }
        conn.execute("DELETE FROM mv_change_log")
        # a project write that leaves its chain, liveness and created_at alone: not the chain's
        conn.execute(
            "UPDATE projects SET title = title || '!' "
            "WHERE id = (SELECT min(id) FROM projects WHERE chain_id IS NOT NULL)"
        )
        assert {entity for entity, _ in logged(conn)} == {"project", "owner"}
        conn.execute("DELETE FROM mv_change_log")
        conn.execute("UPDATE chain_posts SET chain_id = 3 WHERE id = 1 AND chain_id <> 3")
        conn.execute("INSERT INTO follows VALUES (3, 4) ON CONFLICT DO NOTHING")
        conn.execute("UPDATE intro_requests SET status = 'declined' WHERE id = 1")
        entities = {entity for entity, _ in logged(conn)}
        assert entities <= {"post", "chain_activity", "followee", "intro_target"}
        assert {"followee", "intro_target"} <= entities
        # every entity feeds the views that read it
        found = routes(conn)
        assert found["project_votes"] == {
            "mv_feed_projects",
            "mv_leaderboard_projects",
            "mv_leaderboard_builders",
            "mv_project_details",
            "mv_search_index",
        }
        assert found["followee"] == {
            "mv_leaderboard_builders",
            "mv_search_index",
            "mv_investors_directory",
        }
        assert {view for views in found.values() for view in views} == set(VIEWS)


def test_every_source_table_has_change_log_triggers_for_rows_and_truncate(db):
    sources = (
        "projects",
        "users",
        "chains",
        "votes",
        "comments",
        "follows",
        "chain_members",
        "chain_posts",
        "chain_post_replies",
        "intro_requests",
        "investor_profiles",
    )
    with psycopg.connect(db) as conn:
        # tgtype bits: 0 row-level, 1 BEFORE, 2 INSERT, 3 DELETE, 4 UPDATE, 5 TRUNCATE
        triggers = rows(
            conn,
            "SELECT tgrelid::regclass::text, tgtype::int FROM pg_trigger "
            "WHERE tgname LIKE 'trg_opskit_mvlog%' ORDER BY 1, 2",
        )
        assert {table for table, _ in triggers} == set(sources)
        for table in sources:
            kinds = [kind for t, kind in triggers if t == table]
            events = 0
            for kind in kinds:
                assert kind & 0b10 == 0, table  # AFTER
                assert kind & 1 or kind == 0b100000, table  # rows, or the TRUNCATE statement
                events |= kind
            assert events & 0b111100 == 0b111100, table
            conn.execute(sql.SQL("TRUNCATE {} CASCADE").format(sql.Identifier(table)))
            assert ("*", 0) in logged(conn), table  # everything it feeds is rebuilt
            conn.rollback()


def test_monitoring_queries_run_unchanged(db):
    with psycopg.connect(db) as conn:
        conn.execute(
            "INSERT INTO mv_refresh_log (view_name, refresh_started_at, refresh_finished_at, "
            "duration_ms, status, worker_id) VALUES "
            "('mv_feed_projects', now() - interval '1 minute', now(), 120, 'completed', 'w1'), "
            "('mv_feed_projects', now() - interval '2 minutes', now(), 80, 'completed', 'w1'), "
            "('mv_search_index', now(), now(), 5, 'failed', 'w2')"
        )
        assert len(rows(conn, MONITORING_QUERIES[0])) == 8
        assert rows(conn, MONITORING_QUERIES[1]) == [("mv_feed_projects", 100, 2)]


def test_down_then_up_again(db):
    with psycopg.connect(db) as conn:
        app_rows = rows(conn, "SELECT count(*) FROM votes UNION ALL SELECT count(*) FROM projects")
    with pytest.raises(psycopg.errors.DependentObjectsStillExist):  # phase3 still uses it
        apply(db, "phase2_materialized_views.down.sql")
    apply(db, "phase3_search_and_forums.down.sql")
    with psycopg.connect(db) as conn:
        phase2_tables = conn.execute(
            "SELECT relname FROM pg_class WHERE relname = ANY(%s) ORDER BY 1", (list(VIEWS),)
        ).fetchall()
        assert phase2_tables == [(v,) for v in sorted(PHASE2_VIEWS)]
        assert rows(conn, "SELECT DISTINCT view_name FROM mv_change_routes ORDER BY 1") == [
            (v,) for v in sorted(PHASE2_VIEWS)
        ]
    apply(db, "phase2_materialized_views.down.sql")
    with psycopg.connect(db) as conn:
        assert (
            rows(
                conn,
                "SELECT relname FROM pg_class WHERE relname LIKE 'mv\\_%' "
                "UNION ALL SELECT tgname::text FROM pg_trigger WHERE tgname LIKE 'trg_opskit_mv%' "
                "UNION ALL SELECT proname::text FROM pg_proc "
                "WHERE proname LIKE 'mv\\_%' OR proname LIKE 'opskit\\_mv\\_%' "
                "OR proname = 'opskit_trending_score'",
            )
            == []
        )
        assert rows(conn, "SELECT count(*) FROM pg_extension WHERE extname = 'pg_trgm'") == [(1,)]
        assert (
            rows(conn, "SELECT count(*) FROM votes UNION ALL SELECT count(*) FROM projects")
            == app_rows
        )
        conn.execute(
            "INSERT INTO comments (project_id, user_id, body) VALUES (1, 1, 'no triggers')"
        )
    apply(db, "phase2_materialized_views.sql")
    apply(db, "phase3_search_and_forums.sql")
    assert_views_equal_truth(db)


def test_phases_apply_to_an_empty_base_schema(base_db_url):
    apply_phase1(base_db_url)
    apply(base_db_url, "phase2_materialized_views.sql")
    apply(base_db_url, "phase3_search_and_forums.sql")
    refresh_all(base_db_url)
    with psycopg.connect(base_db_url) as conn:
        for view in VIEWS:
            assert rows(conn, f"SELECT count(*) FROM {view}") == [(0,)]
