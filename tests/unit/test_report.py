"""opskit.benchmarking.report and `opskit report` on generated result folders in the exact loadtest format."""

import json
import re
import tomllib
from fnmatch import fnmatch
from html.parser import HTMLParser
from importlib.resources import files
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from opskit.benchmarking import charts, claims, report
from opskit.benchmarking.soak import SoakResult
from opskit.cli import app
from tests.unit.result_folders import ENDPOINTS, write_result_folder

STORY = {
    "scale": "tiny",
    "seed_s": 1.25,
    "migrate": [
        {"phase": "phase1_denormalized_tables", "duration_ms": 310},
        {"phase": "phase4_critical_indexes", "duration_ms": 4700},
    ],
    "write_cost": {
        "results": [
            {
                "label": "no phases",
                "hot": True,
                "writers": 32,
                "seconds": 15.0,
                "transactions": 45000,
                "tps": 3000.0,
                "p50_ms": 0.27,
                "p99_ms": 0.97,
                "deadlocks": 0,
                "other_errors": 0,
                "wal_bytes_per_write": 180.0,
            },
            {
                "label": "all phases",
                "hot": True,
                "writers": 32,
                "seconds": 15.0,
                "transactions": 16000,
                "tps": 1080.0,
                "p50_ms": 0.71,
                "p99_ms": 4.2,
                "deadlocks": 0,
                "other_errors": 0,
                "wal_bytes_per_write": 900.0,
            },
        ],
        "throughput_vs_baseline": 0.36,
        "p99_vs_baseline": 4.33,
    },
    "staleness": {
        "p50_s": 0.6,
        "p95_s": 1.4,
        "max_s": 3.1,
        "refreshes": 14,
        "by_view": {"mv_feed_projects": {"p50_s": 0.5, "p95_s": 1.2, "max_s": 2.5, "batches": 9}},
    },
    "api_floor": None,
}


class _Tables(HTMLParser):
    """The text of every cell of every table with an id: {id: [[cell, ...], ...]}."""

    def __init__(self):
        super().__init__()
        self.tables, self._table, self._row, self._cell = {}, None, None, None

    def handle_starttag(self, tag, attrs):
        if tag == "table" and dict(attrs).get("id"):
            self._table = self.tables.setdefault(dict(attrs)["id"], [])
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self._table.append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def tables(html: str) -> dict[str, list[list[str]]]:
    parser = _Tables()
    parser.feed(html)
    return parser.tables


def body_rows(table: list[list[str]]) -> dict[str, list[str]]:
    """Rows after the header, keyed by their first cell."""
    return {row[0]: row for row in table[1:]}


@pytest.fixture
def folders(tmp_path):
    before = write_result_folder(
        tmp_path / "before", seed=1, flags={2: ["generator_cpu_high", "rate_below_target"]}
    )
    after = write_result_folder(tmp_path / "after", mode="after", seed=2, speed=2.0)
    return before, after


def test_html_report_has_headline_claims_flags_and_story(folders, tmp_path):
    out = report.render(*folders, tmp_path / "out" / "report.html", story=STORY)
    html = out.read_text()
    found = tables(html)

    headline = body_rows(found["headline-table"])
    assert sorted(headline) == sorted(ENDPOINTS)
    stats_row = headline["GET /api/users/stats"]
    assert stats_row[3].startswith(("1.8", "1.9", "2.0", "2.1"))  # the 2x speed-up
    assert re.search(r"\[\d+\.\d+x, \d+\.\d+x\]", stats_row[3])  # with its interval

    claims = found["claims-table"]
    claimed = {(row[0], row[1]): row for row in claims[1:]}
    assert claimed[("dashboard stats", "GET /api/users/stats")][3] == "12.0x"
    assert claimed[("upvote", "POST /api/votes")][3] == "40.0x"
    assert claimed[("feed", "GET /api/projects?sort=trending")][3] == "6.67x"
    assert claimed[("search", "GET /api/search")][-1] == "not measured"
    assert claimed[("upvote", "POST /api/votes")][-1].startswith("overstated")

    runs = found["runs-table"]
    flagged = [row for row in runs[1:] if row[1] == "run-02" and row[0] == "before"]
    assert "generator_cpu_high" in flagged[0][-1] and "rate_below_target" in flagged[0][-1]
    assert len(runs) == 1 + 10  # flagged runs are kept
    assert 'id="flagged-runs"' in html

    assert body_rows(found["story-migrate"])["phase4_critical_indexes"][1] == "4,700 ms"
    assert body_rows(found["story-write-cost"])["all phases (hot key)"][2] == "1,080"
    staleness = body_rows(found["story-staleness"])
    assert staleness["all"][1:] == ["0.6 s", "1.4 s", "3.1 s", "14"]
    assert staleness["mv_feed_projects"][1:] == ["0.5 s", "1.2 s", "2.5 s", "9"]
    environment = body_rows(found["environment-table"])
    assert environment["data scale"][1:] == ["tiny", "tiny"]
    assert environment["rows: votes"][1] == "2,000"

    assert html.count("<svg") == len(ENDPOINTS) + 2 * 3  # spectra; latency, rate, CPU per side
    for external in ("http://", "https://", "src=", "url(", "@import", "<script", "<link"):
        assert external not in html
    assert out.stat().st_size <= report.MAX_HTML_BYTES


def test_markdown_summary_has_the_headline_verdicts_and_flags(folders, tmp_path):
    out = report.render(*folders, tmp_path / "summary.md", fmt="md")
    text = out.read_text()
    for endpoint in ENDPOINTS:
        assert f"| `{endpoint}` |" in text
    assert "| dashboard stats | `GET /api/users/stats` | 12.0x |" in text
    assert "- before run-02: generator_cpu_high, rate_below_target" in text
    assert "**3 endpoints: 3 without a significant change (~)." in text
    assert "use --repeat 6 or more" in text  # 3 endpoints x 5 metrics need 6 runs per side
    assert "<svg" not in text


def test_without_a_story_there_is_no_story_section(folders, tmp_path):
    html = report.render(*folders, tmp_path / "r.html").read_text()
    assert 'id="story"' not in html and "story-migrate" not in html


def test_a_2x_speed_up_gets_the_verdict_faster_and_an_a_a_comparison_gets_tilde(tmp_path):
    one = {"GET /api/users/stats": 8.0}
    before = write_result_folder(tmp_path / "before", endpoints=one, seed=1)
    faster = write_result_folder(tmp_path / "faster", endpoints=one, seed=2, speed=2.0)
    same = write_result_folder(tmp_path / "same", endpoints=one, seed=3)

    faster_html = report.render(before, faster, tmp_path / "faster.html").read_text()
    assert body_rows(tables(faster_html)["headline-table"])["GET /api/users/stats"][-1] == "faster"
    assert '<p class="summary" id="summary">1 endpoint: 1 faster.' in faster_html
    assert "claims, one per endpoint, against the measured p50 speed-up intervals: " in faster_html

    same_html = report.render(before, same, tmp_path / "same.html").read_text()
    assert body_rows(tables(same_html)["headline-table"])["GET /api/users/stats"][-1] == "~"


def test_robust_to_one_sided_endpoints_closed_model_and_single_runs(tmp_path):
    before = write_result_folder(
        tmp_path / "before", runs=1, model="closed", endpoints={"GET /api/chains": 10.0}
    )
    after = write_result_folder(
        tmp_path / "after",
        runs=1,
        model="closed",
        seed=4,
        endpoints={"GET /api/chains": 5.0, "GET /api/search": 7.0},
    )
    html = report.render(before, after, tmp_path / "r.html").read_text()
    headline = body_rows(tables(html)["headline-table"])
    assert headline["GET /api/search"][-1] == "after only"
    assert headline["GET /api/search"][1] == "n/a"
    assert headline["GET /api/chains"][-1] == "~"  # one run per side can never be significant
    assert "fewer than 4 runs per side" in html
    assert "p99 (CO-corrected)" in html and "n/a" in html


def _cli(*args):
    return CliRunner().invoke(app, ["report", *map(str, args)], catch_exceptions=False)


def test_cli_writes_the_report_and_prints_json(folders, tmp_path):
    story = tmp_path / "story.json"
    story.write_text(json.dumps(STORY))
    out = tmp_path / "r.html"
    result = _cli(*folders, "-o", out, "--story", story, "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload == {"output": str(out), "format": "html", "bytes": out.stat().st_size}
    assert "story-migrate" in out.read_text()


def _mismatch(tmp_path, **kwargs):
    return write_result_folder(tmp_path / "other", mode="after", **kwargs)


@pytest.mark.parametrize(
    ("make_after", "message"),
    [
        (lambda tmp: tmp / "missing", "after result folder .* does not exist"),
        (lambda tmp: (tmp / "empty").mkdir() or tmp / "empty", "holds no run-\\* folder"),
        (lambda tmp: _mismatch(tmp, scenario="browse"), "differ in scenario"),
        (lambda tmp: _mismatch(tmp, rate=30.0), "differ in target_rate"),
        (lambda tmp: _mismatch(tmp, model="closed"), "differ in model"),
        (lambda tmp: _mismatch(tmp, failing_run=3), "after run-03 has no successful request"),
    ],
    ids=["missing", "empty", "scenario", "rate", "model", "no-success"],
)
def test_bad_input_exits_2_with_one_line_and_leaves_no_file(tmp_path, make_after, message):
    before = write_result_folder(tmp_path / "before", runs=2)
    after = make_after(tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = _cli(before, after, "-o", out_dir / "r.html")
    assert result.exit_code == 2
    error_lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and re.search(message, error_lines[0])
    assert "Traceback" not in result.output
    assert list(out_dir.iterdir()) == []


def test_a_failed_render_keeps_the_previous_report(tmp_path):
    before = write_result_folder(tmp_path / "before", runs=2)
    after = write_result_folder(tmp_path / "after", runs=2, scenario="browse")
    out = tmp_path / "r.html"
    out.write_text("the previous report")
    assert _cli(before, after, "-o", out).exit_code == 2
    assert out.read_text() == "the previous report"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_bad_story_and_malformed_run_exit_2(tmp_path):
    before = write_result_folder(tmp_path / "before", runs=2)
    after = write_result_folder(tmp_path / "after", runs=2, seed=5)
    story = tmp_path / "story.json"
    story.write_text("{not json")
    result = _cli(before, after, "-o", tmp_path / "r.html", "--story", story)
    assert result.exit_code == 2 and "not valid JSON" in result.output

    requests = after / "run-02" / "requests.parquet"
    pd.read_parquet(requests).drop(columns=["latency_ms"]).to_parquet(requests)
    result = _cli(before, after, "-o", tmp_path / "r.html")
    assert result.exit_code == 2 and "lacks the column(s) latency_ms" in result.output
    assert not (tmp_path / "r.html").exists()


def _packaged_claims() -> dict:
    """claims.json read as a user of the installed package would, not through opskit's loader."""
    return json.loads((files(claims.__package__) / claims.CLAIMS_FILE).read_text())


def test_the_claims_are_the_write_ups_figures():
    """The packaged data is the write-up's table, and the report's claims are that data."""
    data = _packaged_claims()
    assert data["source"] == 'the original write-up, table "Performance Improvements Achieved"'
    table = {
        entry["write_up_row"]: (entry["before_ms"], entry["after_ms"], entry["stated"])
        for entry in data["claims"]
    }
    assert table == {  # the write-up's rows, as it printed them
        "GET /api/users/stats": (600, 50, "12x faster"),
        "GET /api/projects (feed)": (800, 120, "6.7x faster"),
        "GET /api/leaderboard/projects": (1200, 80, "15x faster"),
        "GET /api/chains": (500, 90, "5.6x faster"),
        "GET /api/search": (1500, 150, "10x faster"),
        "POST /api/votes (upvote)": (200, 5, "40x faster"),
    }
    for entry in data["claims"]:  # its stated factor is its own times' ratio, as rounded there
        stated = entry["stated"].removesuffix("x faster")
        digits = len(stated.partition(".")[2])
        assert round(entry["before_ms"] / entry["after_ms"], digits) == float(stated)
        assert entry["write_up_row"].startswith(entry["endpoint"])
    assert [(c.label, c.path, c.before_ms, c.after_ms) for c in report.CLAIMS] == [
        (e["label"], e["endpoint"], e["before_ms"], e["after_ms"]) for e in data["claims"]
    ]


def test_the_claims_data_ships_in_the_wheel():
    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    package_data = pyproject["tool"]["setuptools"]["package-data"].get(claims.__package__, [])
    assert any(fnmatch(claims.CLAIMS_FILE, pattern) for pattern in package_data)


def test_the_report_compares_against_every_packaged_claim(folders, tmp_path):
    out = report.render(*folders, tmp_path / "report.md", fmt="md")
    rows = [line.split(" | ") for line in out.read_text().splitlines() if line.startswith("| ")]
    claimed = {(row[0].removeprefix("| "), row[2]) for row in rows}
    for entry in _packaged_claims()["claims"]:
        factor = report.format_times(entry["before_ms"] / entry["after_ms"])
        assert (entry["label"], factor) in claimed


def test_a_partial_story_and_a_sparse_meta_still_render(tmp_path):
    before = write_result_folder(tmp_path / "before", runs=2)
    after = write_result_folder(tmp_path / "after", runs=2, seed=6)
    keep = {"format", "mode", "scenario", "model", "target_rate", "started_at", "finished_at"}
    for meta_path in after.glob("run-*/meta.json"):
        meta = json.loads(meta_path.read_text())
        meta_path.write_text(
            json.dumps({k: v for k, v in meta.items() if k in keep | {"warmup_s"}})
        )
    story = {
        "scale": "tiny",
        "migrate": [{"phase": "phase0_cleanup"}, "not a phase", {"phase": "x", "duration_ms": 5}],
        "write_cost": None,
        "staleness": {"p50_s": None},
        "api_floor": ["not", "a", "mapping"],
    }
    html = report.render(before, after, tmp_path / "r.html", story=story).read_text()
    found = tables(html)
    migrate = body_rows(found["story-migrate"])
    assert migrate["phase0_cleanup"][1] == "n/a" and migrate["total"][1] == "5.00 ms"
    assert "story-write-cost" not in found and "story-api-floor" not in found
    assert body_rows(found["environment-table"])["data scale"] == ["data scale", "tiny", ""]


def test_errors_get_their_own_chart_and_count(tmp_path):
    before = write_result_folder(tmp_path / "before", runs=2, error_rate=0.05)
    after = write_result_folder(tmp_path / "after", runs=2, seed=8)
    html = report.render(before, after, tmp_path / "r.html").read_text()
    assert "before: errors per second" in html and "after: errors per second" not in html
    runs = tables(html)["runs-table"]
    assert all(int(row[4]) > 0 for row in runs[1:] if row[0] == "before")
    assert all(row[4] == "0" for row in runs[1:] if row[0] == "after")


def test_a_new_error_rate_is_reported_in_percentage_points_and_as_worse(tmp_path):
    one = {"POST /api/votes": 4.0}
    # 7 testable metrics: Holm needs p <= 0.05 / 7, which 6 runs per side can reach, 5 cannot
    before = write_result_folder(tmp_path / "before", endpoints=one, runs=6, seed=1)
    after = write_result_folder(tmp_path / "after", endpoints=one, runs=6, seed=2, error_rate=0.2)
    html = report.render(before, after, tmp_path / "r.html").read_text()
    change = re.search(r"<td class=\"text\">error rate</td>.*?<td>([^<]*)</td>\n</tr>", html, re.S)
    assert re.fullmatch(r"\+(19|20|21)\.\d\d pp", change.group(1))


def test_swapped_folders_are_pointed_out(folders, tmp_path):
    before, after = folders
    html = report.render(after, before, tmp_path / "r.html").read_text()
    assert "the before folder holds only after-mode runs: are the two folders swapped?" in html
    assert (
        "are the two folders swapped"
        not in report.render(*folders, tmp_path / "ok.html").read_text()
    )


def test_chart_lines_break_at_gaps_and_log_axes_skip_non_positive_values():
    line = charts.Series("run", [0, 1, 2, 3, 4], [5.0, float("nan"), 7.0, 0.0, 9.0], "#000")
    svg = str(
        charts.line_chart([line], x=charts.Axis("s"), y=charts.Axis("ms", log=True), title="t")
    )
    path = re.search(r'<path d="([^"]+)"', svg).group(1)
    assert path.count("M") == 3 and path.count("L") == 0  # three isolated points, no bridges
    assert svg.startswith("<svg") and "xmlns" not in svg and "<title>t</title>" in svg


def _soak_result(**changes) -> dict:
    """A soak.json as `opskit soak` writes it (its own dataclass, serialized the same way)."""
    result = SoakResult(
        database="postgresql://app:***@db/app",
        redis="redis://cache:6379/0",
        out_dir="soak-out",
        duration_s=300.0,
        writers=32,
        fault_kinds=["flushall", "trigger_outage"],
        writes_committed=668302,
        writes_rolled_back=35113,
        api_requests=21384,
        faults={"flushall": 2, "trigger_outage": 1},
        trigger_outages_detected=1,
        drift_before_fix={"user_dashboard_stats": 933, "redis_upvotes": 0},
        drift_after_fix={"user_dashboard_stats": 0},
        staleness_s={"p50": 34.0, "p95": 39.5, "max": 61.0},
    )
    for name, value in changes.items():
        setattr(result, name, value)
    return json.loads(json.dumps(result.as_dict()))


def test_a_soak_result_gets_its_table_and_its_verdict(folders, tmp_path):
    soak_file = tmp_path / "soak.json"
    soak_file.write_text(json.dumps(_soak_result()))
    out = tmp_path / "r.html"
    assert _cli(*folders, "-o", out, "--soak", soak_file).exit_code == 0
    html = out.read_text()
    rows = body_rows(tables(html)["soak-table"])
    assert rows["writes committed"][1] == "668,302"
    assert rows["faults injected"][1] == "flushall ×2, trigger_outage ×1"
    assert rows["drift found before --fix"][1] == "933"
    assert rows["drift after --fix"][1] == "0"
    assert rows["view staleness p50 / p95 / max"][1] == "34 s / 39.5 s / 61 s"
    assert "converged to the truth" in html

    failed = _soak_result(deadlocks=2, drift_after_fix={"user_dashboard_stats": 5})
    text = report.render(*folders, tmp_path / "s.md", fmt="md", soak=failed).read_text()
    assert "problems: drift after --fix: 5; 2 deadlocks." in text
    assert "| deadlocks | 2 |" in text
    assert "converged" not in text


def test_a_file_that_is_not_a_soak_result_exits_2(folders, tmp_path):
    soak_file = tmp_path / "soak.json"
    soak_file.write_text(json.dumps(STORY))
    result = _cli(*folders, "-o", tmp_path / "r.html", "--soak", soak_file)
    assert result.exit_code == 2 and "is not an `opskit soak` result" in result.output
    assert not (tmp_path / "r.html").exists()


def _ramp(mode: str, p99s: list[float], held: int) -> dict:
    steps = [
        {
            "users": 100 * (i + 1), "rps": 30.0 * (i + 1), "expected_rps": 31.0 * (i + 1),
            "p50_ms": p99 / 4, "p99_ms": p99, "p99_corrected_ms": p99 + 1, "errors": 0,
            "generator_cpu": 12.5, "flags": [], "flagged": False, "held": p99 <= 200,
        }
        for i, p99 in enumerate(p99s)
    ]  # fmt: skip
    return {
        "mode": mode, "steps": steps, "held_users": held, "slo_p99_ms": 200.0,
        "think_s": [1.0, 5.0], "step_seconds": 30.0, "stopped_by": "slo",
        "server": {"workers": 2, "pool_size": 8},
    }  # fmt: skip


def test_capacity_ramps_get_a_chart_with_the_slo_and_knees_and_a_table_per_mode(folders, tmp_path):
    story = {
        **STORY,
        "capacity": {
            "before": _ramp("before", [150.0, 900.0], 100),
            "after": _ramp("after", [20.0, 40.0, 90.0, 450.0], 300),
            "staleness": {
                "p50_s": 0.8,
                "p95_s": 1.9,
                "max_s": 2.4,
                "refreshes": 40,
                "pending_at_end": 0,
            },  # fmt: skip
        },
    }
    html = report.render(*folders, tmp_path / "r.html", story=story).read_text()
    found = tables(html)

    assert 'id="capacity"' in html
    assert "SLO: p99 200 ms" in html
    assert "before knee: 100 users" in html and "after knee: 300 users" in html
    assert [row[0] for row in found["capacity-after"][1:]] == ["100", "200", "300", "400"]
    assert body_rows(found["capacity-before"])["200"][4] == "900 ms"
    assert body_rows(found["capacity-staleness"])["0.8 s"][1] == "1.9 s"
    assert html.count("<svg") == len(ENDPOINTS) + 2 * 3 + 1  # and the capacity chart

    text = report.render(*folders, tmp_path / "r.md", story=story, fmt="md").read_text()
    assert "| after | 300 | the SLO |" in text


def test_a_story_without_capacity_has_no_capacity_section(folders, tmp_path):
    html = report.render(*folders, tmp_path / "r.html", story=STORY).read_text()
    assert 'id="capacity"' not in html
