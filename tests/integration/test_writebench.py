"""`opskit bench-writes` mechanics on a short, small run (its figures are benchmarks, not asserts)."""

import json

from typer.testing import CliRunner

from opskit import writebench
from opskit.cli import app


def test_vote_writes_are_measured(tiny_db_url):
    result = writebench.run_vote_writes(
        tiny_db_url, writebench.WriteLoad(writers=3, seconds=1, hot=True), "tiny"
    )
    assert result.transactions > 0 and result.tps > 0
    assert 0 < result.p50_ms <= result.p99_ms
    assert result.deadlocks == 0 and result.other_errors == 0
    assert result.wal_bytes_per_write > 0


def test_the_command_compares_no_phases_with_all_phases(test_servers):
    out = CliRunner().invoke(
        app,
        ["bench-writes", "--writers", "2", "--seconds", "1", "--scale", "tiny", "--json"],
        env={"OPSKIT_DATABASE_URL": test_servers.admin_url},
        catch_exceptions=False,
    )
    assert out.exit_code == 0, out.output
    payload = json.loads(out.stdout)
    assert [r["label"] for r in payload["results"]] == ["no phases", "all phases"]
    assert payload["throughput_vs_baseline"] > 0
