"""`opskit bench` on tiny data: the whole story, from a fresh database to the report."""

from __future__ import annotations

import json
import os
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from opskit.benchmarking import story
from opskit.benchmarking.loadtest import LoadPlan
from opskit.core.errors import BadInput
from opskit.core.settings import Settings


@pytest.fixture
def settings(monkeypatch, test_servers, redis_prefix) -> Settings:
    monkeypatch.setenv("OPSKIT_DATABASE_URL", test_servers.database_url("postgres"))
    monkeypatch.setenv("OPSKIT_REDIS_URL", test_servers.redis_url)
    monkeypatch.setenv("OPSKIT_REDIS_PREFIX", redis_prefix)
    # The daemon on the after clone (a subprocess) applies the load's writes twice a second.
    monkeypatch.setenv("OPSKIT_REFRESH_POLL_S", "0.5")
    return Settings.from_env()


def _plan(*, write_cost: bool = False, keep_databases: bool = False) -> story.BenchPlan:
    return story.BenchPlan(
        scale="tiny",
        load=LoadPlan(
            mode="before", scenario="browse", rate=100, duration_s=2, warmup_s=0.5, repeat=2
        ),
        write_cost=write_cost,
        keep_databases=keep_databases,
        write_writers=2,
        write_seconds=1,
        database_prefix=f"opskit_benchtest_{os.getpid()}",
    )


def _databases(admin_url: str, prefix: str) -> list[str]:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s ORDER BY 1", [prefix + "%"]
        )
        return [row[0] for row in rows]


@pytest.fixture
def kept_databases(test_servers):
    """Drops the bench databases a test kept."""
    prefix = _plan().database_prefix
    yield prefix
    with psycopg.connect(test_servers.admin_url, autocommit=True) as conn:
        for name in _databases(test_servers.admin_url, prefix):
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def _check_story(data: Path, story: dict) -> None:
    assert json.loads((data / "story.json").read_text()) == story
    assert story["scale"] == "tiny" and story["seed_s"] > 0
    assert [p["phase"] for p in story["migrate"]][0] == "phase0_cleanup"
    assert len(story["migrate"]) == 6 and all(p["duration_ms"] >= 0 for p in story["migrate"])
    assert story["staleness"]["refreshes"] >= 0 and "p95_s" in story["staleness"]
    assert story["api_floor"]["before p50_ms"] > 0 and story["api_floor"]["after p99_ms"] > 0


@pytest.mark.bench  # a minute: the write cost seeds and migrates two more databases
def test_bench_with_the_write_cost(settings, test_servers, tmp_path):
    out = tmp_path / "reports" / "story.html"
    plan = _plan(write_cost=True)
    result = story.bench(settings, plan, out)
    assert _databases(test_servers.admin_url, plan.database_prefix) == []  # dropped at the end
    _check_story(tmp_path / "reports" / "story", result.story)
    labels = [r["label"] for r in result.story["write_cost"]["results"]]
    assert labels == ["no phases", "all phases"]
    assert "all phases" in out.read_text()


@pytest.mark.slow
def test_bench_tells_the_whole_story(settings, test_servers, kept_databases, tmp_path):
    plan = _plan(keep_databases=True)
    out = tmp_path / "reports" / "story.html"
    notes = []
    result = story.bench(settings, plan, out, note=notes.append)

    assert out.is_file() and result.report == str(out)
    data = tmp_path / "reports" / "story"
    for mode in ("before", "after"):
        assert sorted(p.name for p in (data / mode).iterdir()) == ["run-01", "run-02"]
        for run in ("run-01", "run-02"):
            meta = json.loads((data / mode / run / "meta.json").read_text())
            assert meta["mode"] == mode and meta["scale"] == "tiny"
            assert meta["target_rate"] == 100.0 and meta["requests_total"] > 0
    # Alternating: before 1, after 1, before 2, after 2.
    starts = sorted(
        (json.loads((data / m / r / "meta.json").read_text())["started_at"], m)
        for m in ("before", "after")
        for r in ("run-01", "run-02")
    )
    assert [mode for _, mode in starts] == ["before", "after", "before", "after"]
    # Both clones hold the seeded data; only the after clone was migrated.
    after_meta = json.loads((data / "after" / "run-01" / "meta.json").read_text())
    assert after_meta["row_counts"]["users"] == 200
    names = _databases(test_servers.admin_url, kept_databases)
    assert names == [f"{kept_databases}_{n}" for n in ("after", "before", "seed")]
    for mode, migrated in (("before", False), ("after", True)):
        url = test_servers.database_url(f"{kept_databases}_{mode}")
        with psycopg.connect(url) as conn:
            views = conn.execute("SELECT to_regclass('mv_feed_projects')").fetchone()[0]
        assert (views is not None) == migrated

    _check_story(data, result.story)
    assert result.story["write_cost"] is None
    html = out.read_text()
    assert "GET /api/projects" in html and "phase4_critical_indexes" in html
    assert any("migrate" in note for note in notes)


def test_bench_refuses_a_folder_it_did_not_write(settings, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(BadInput, match="not an `opskit bench` result folder"):
        story.bench(settings, _plan(), tmp_path / "mine.html")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_bench_needs_an_arrival_rate(settings, tmp_path):
    plan = story.BenchPlan(
        scale="tiny", load=LoadPlan(mode="before", scenario="browse", users=2, duration_s=2)
    )
    with pytest.raises(BadInput, match="needs --rate"):
        story.bench(settings, plan, tmp_path / "r.html")
    assert list(tmp_path.iterdir()) == []


def test_bench_needs_a_report_file_name(settings, tmp_path):
    with pytest.raises(BadInput, match="must end in .html or .md"):
        story.bench(settings, _plan(), tmp_path / "report")
    assert list(tmp_path.iterdir()) == []
