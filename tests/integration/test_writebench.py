"""`opskit bench-writes` mechanics on a short, small run (its figures are benchmarks, not asserts)."""

import json

import psycopg
from typer.testing import CliRunner

from opskit.benchmarking import write_cost
from opskit.cli import app
from opskit.engine import migrations, truth


def test_vote_writes_are_measured(tiny_db_url):
    result = write_cost.run_vote_writes(
        tiny_db_url, write_cost.WriteLoad(writers=3, seconds=1, hot=True), "tiny"
    )
    assert result.transactions > 0 and result.tps > 0
    assert 0 < result.p50_ms <= result.p99_ms
    assert result.deadlocks == 0 and result.other_errors == 0
    assert result.wal_bytes_per_write > 0
    assert result.after_checkpoint  # the test servers' role is a superuser
    with psycopg.connect(tiny_db_url) as conn:
        local = write_cost._local_postmaster(conn.info.backend_pid) is not None
    # The test servers run on this machine (embedded, or CI's own PostgreSQL), so the server's
    # CPU per write is measured; a remote test server would leave it unmeasured (None).
    assert local, "the test PostgreSQL must run on this machine"
    assert result.server_cpu_us_per_write is not None and result.server_cpu_us_per_write > 0


def test_phased_runs_fold_deltas_meanwhile_as_the_daemon_would(migrated_db_url):
    load = write_cost.WriteLoad(writers=2, seconds=2.5, hot=True, warmup_s=0.5)
    result = write_cost.run_vote_writes(migrated_db_url, load, "all phases", fold_deltas=True)
    assert result.transactions > 0
    with psycopg.connect(migrated_db_url) as conn:
        pending = conn.execute("SELECT count(*) FROM project_stats_delta").fetchone()[0]
    # the fold ran every second: at most the last second's deltas are left of the run's
    assert pending < result.transactions


def test_synchronous_commit_is_set_for_the_writers(tiny_db_url):
    for mode in ("on", "off"):
        load = write_cost.WriteLoad(writers=2, seconds=1, synchronous_commit=mode)
        assert write_cost.run_vote_writes(tiny_db_url, load, mode).synchronous_commit == mode


def test_compare_takes_medians_and_the_range_of_the_pairs():
    def run(label, tps, p99):
        return write_cost.WriteBenchResult(
            label, True, 32, "off", 10, 1000, tps, 1, p99, 0, 0, 100, 50
        )

    runs = [run("no phases", 100, 2), run("all phases", 50, 4), run("no phases", 200, 2)]
    runs += [run("all phases", 180, 2), run("no phases", 150, 2), run("all phases", 120, 3)]
    comparison = write_cost.compare(runs)
    assert comparison.throughput_vs_baseline == 0.8  # 120 / 150
    assert comparison.throughput_ratio_range == (0.5, 0.9)
    assert comparison.throughput_pair_median == 0.8  # of 0.5, 0.9, 0.8
    assert comparison.p99_vs_baseline == 1.5
    assert comparison.server_cpu_vs_baseline == 1.0


def test_the_command_compares_no_phases_with_all_phases(test_servers):
    out = CliRunner().invoke(
        app,
        [
            "bench-writes",
            "--writers",
            "2",
            "--seconds",
            "1",
            "--scale",
            "tiny",
            "--synchronous-commit",
            "on",
            "--json",
        ],
        env={"OPSKIT_DATABASE_URL": test_servers.admin_url},
        catch_exceptions=False,
    )
    assert out.exit_code == 0, out.output
    payload = json.loads(out.stdout)
    assert [r["label"] for r in payload["results"]] == ["no phases", "all phases"]
    assert payload["throughput_vs_baseline"] > 0
    assert {r["synchronous_commit"] for r in payload["results"]} == {"on"}


def test_the_breakdown_switches_each_part_off_on_a_scratch_clone(test_servers, monkeypatch):
    monkeypatch.setattr(write_cost, "BREAKDOWN_WRITES", 300)
    monkeypatch.setattr(write_cost, "BREAKDOWN_WARMUP_WRITES", 50)
    named = []  # the scratch databases this run names (other runs may share the server)
    database_url = write_cost.clones.database_url

    def recording_database_url(url: str, name: str) -> str:
        if name.startswith("opskit_benchw_"):
            named.append(name)
        return database_url(url, name)

    monkeypatch.setattr(write_cost.clones, "database_url", recording_database_url)
    out = CliRunner().invoke(
        app,
        ["bench-writes", "--breakdown", "--repeat", "1", "--scale", "tiny", "--json"],
        env={"OPSKIT_DATABASE_URL": test_servers.admin_url},
        catch_exceptions=False,
    )
    assert out.exit_code == 0, out.output
    payload = json.loads(out.stdout)
    runs = {run["label"]: run for run in payload["runs"]}
    assert list(runs) == [label for label, _, _ in write_cost.BREAKDOWN_VARIANTS]
    log_triggers = set(write_cost.VOTE_TRIGGERS["change_log"])
    phase1 = set(write_cost.VOTE_TRIGGERS["phase1"])
    on = {label: set(run["vote_triggers_on"]) for label, run in runs.items()}
    assert on["no phases"] == set()
    assert on["all phases"] >= log_triggers | phase1
    assert not on["all phases, change-log triggers off"] & log_triggers
    assert on["all phases, change-log triggers off"] >= phase1
    assert not on["all phases, phase-1 vote triggers off"] & phase1
    assert not on["all phases, both off (indexes only)"] & (log_triggers | phase1)
    # What the runs wrote: delta rows only while phase 1's triggers were on, change-log rows
    # (one per vote write) only while the change-log triggers were on.
    wrote = {label: (run["log_rows"], run["delta_rows"]) for label, run in runs.items()}
    assert wrote["no phases"] == (None, None)
    assert wrote["all phases"][0] > 0 and wrote["all phases"][1] > 0
    assert wrote["all phases, change-log triggers off"][1] > 0
    assert wrote["all phases, phase-1 vote triggers off"][1] == 0
    assert wrote["all phases, change-log triggers off"][0] == 0
    assert wrote["all phases, both off (indexes only)"] == (0, 0)
    assert all(run["backend_cpu_us_per_write"] >= 0 for run in runs.values())
    assert set(payload["part_cpu_us_per_write"]) == {
        "change-log triggers",
        "phase-1 vote triggers (delta rows)",
        "indexes and the rest (triggers off)",
    }
    with psycopg.connect(test_servers.admin_url) as conn:  # the scratch databases are gone
        left = conn.execute(
            "SELECT count(*) FROM pg_database WHERE datname = ANY(%s)", (named,)
        ).fetchone()[0]
    assert named and left == 0


def test_every_write_path_statements_write_and_keep_the_relations_exact(tiny_db_url):
    """tools/write_instructions.sh's statements: setups on the plain data, writes after migrate.

    Each path's statements are made after the previous paths' setups ran (intro ids follow).
    """
    measured = {}
    with psycopg.connect(tiny_db_url, autocommit=True) as conn:
        for path in sorted(write_cost.WRITE_PATHS, key=lambda p: p == "intro"):
            setup, measured[path] = write_cost.write_path_statements(tiny_db_url, path, 40)
            assert len(measured[path]) >= 20, path
            for statement in setup:
                conn.execute(statement)
    migrations.migrate(tiny_db_url)
    with psycopg.connect(tiny_db_url, autocommit=True) as conn:
        for path, statements in measured.items():
            written = sum(conn.execute(statement).rowcount for statement in statements)
            # every statement writes a row, but a vote mix deletes votes that may not be there
            assert written >= len(statements) // 2, path
        for spec in truth.DENORMALIZED:
            assert truth.diff_against_truth(conn, spec).differing == 0, spec.relation
