"""`opskit report`: the before-and-after report from two folders of load-test runs.

Reads the result folders `opskit loadtest` writes (one `run-NN/` per repetition, each with
meta.json, requests.parquet and seconds.parquet), checks that the two sides measured the same
thing, compares them with `benchmarking.stats`, and writes one self-contained HTML file (inline CSS
and SVG, no script, no external reference) or a short Markdown summary.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
from jinja2 import Environment, PackageLoader

from opskit import __version__
from opskit.benchmarking import charts, stats
from opskit.benchmarking.claims import CLAIMS, Claim
from opskit.core.errors import BadInput, ProblemFound

FORMATS = ("html", "md")
MAX_HTML_BYTES = 2 * 1024 * 1024
TIMELINE_MAX_POINTS = 300  # per line; longer runs are bucketed so the file stays small

REQUEST_COLUMNS = ("endpoint", "intended_at", "started_at", "latency_ms", "ok", "status")
SECOND_COLUMNS = ("second", "target_rate", "achieved_rate", "errors", "generator_cpu_pct")
# What must match between the two sides for the comparison to mean anything.
COMPARABLE_KEYS = ("scenario", "model", "target_rate", "users")


# ---------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class Run:
    side: str  # "before" or "after": which folder it came from, whatever its meta.mode says
    name: str  # the folder name, run-01 ...
    meta: dict
    requests: pd.DataFrame
    seconds: pd.DataFrame

    @property
    def measured_from(self) -> float:
        return float(self.meta["started_at"]) + float(self.meta["warmup_s"])

    @property
    def measured_until(self) -> float:
        return float(self.meta["finished_at"])

    @cached_property
    def measured(self) -> pd.DataFrame:
        """The requests after the warm-up, the ones every statistic is computed on."""
        return stats.measured_requests(self.requests, self.measured_from, self.measured_until)

    @property
    def flags(self) -> list[str]:
        return list(self.meta.get("flags") or [])

    @cached_property
    def metrics(self) -> dict[str, dict[str, float]]:
        return stats.run_metrics(
            self.requests,
            measured_from=self.measured_from,
            measured_until=self.measured_until,
        )


def load_runs(folder: Path, side: str) -> list[Run]:
    """Every run-* folder of one side, checked for the files and columns the report reads."""
    if not folder.is_dir():
        raise BadInput(
            f"{side} result folder {folder} does not exist",
            hint="pass the --out folder of `opskit loadtest`",
        )
    run_folders = sorted(p for p in folder.glob("run-*") if p.is_dir())
    if not run_folders:
        raise BadInput(
            f"{side} result folder {folder} holds no run-* folder",
            hint="pass the --out folder of `opskit loadtest`, not one of its runs",
        )
    runs = [_load_run(path, side) for path in run_folders]
    first = runs[0]
    for run in runs[1:]:
        _require_same(first, run)
    return runs


def _load_run(folder: Path, side: str) -> Run:
    meta_path = folder / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise BadInput(f"{meta_path} is missing", hint="was the run interrupted?") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BadInput(f"{meta_path} is not valid JSON: {error}") from None
    if not isinstance(meta, dict) or meta.get("format") != 1:
        raise BadInput(f"{meta_path} is not a format-1 opskit loadtest meta.json")
    missing_keys = [k for k in ("started_at", "finished_at", "warmup_s") if k not in meta]
    if missing_keys:
        raise BadInput(f"{meta_path} lacks {', '.join(missing_keys)}")
    requests = _read_parquet(folder / "requests.parquet", REQUEST_COLUMNS)
    seconds = _read_parquet(folder / "seconds.parquet", SECOND_COLUMNS)
    run = Run(side=side, name=folder.name, meta=meta, requests=requests, seconds=seconds)
    if not run.measured["ok"].astype(bool).any():
        raise BadInput(
            f"{side} {folder.name} has no successful request after the warm-up "
            f"({len(run.measured)} measured, {len(requests)} in all)",
            hint=f"was the API at {meta.get('target_url', '?')} up? run it again",
        )
    return run


def _read_parquet(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    if not path.is_file():
        raise BadInput(f"{path} is missing", hint="was the run interrupted?")
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError) as error:
        raise BadInput(f"{path} cannot be read: {error}") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise BadInput(f"{path} lacks the column(s) {', '.join(missing)}")
    return frame


def _comparable(meta: dict) -> dict:
    values = {key: meta.get(key) for key in COMPARABLE_KEYS}
    if values["model"] == "open":
        values.pop("users")  # the open model's load is its rate; the user count is incidental
    return values


def _require_same(reference: Run, other: Run) -> None:
    for key, value in _comparable(reference.meta).items():
        theirs = _comparable(other.meta).get(key)
        same = (
            math.isclose(value, theirs, rel_tol=1e-9)
            if isinstance(value, float | int) and isinstance(theirs, float | int)
            else value == theirs
        )
        if not same:
            raise BadInput(
                f"{reference.side} {reference.name} and {other.side} {other.name} differ in "
                f"{key} ({value!r} vs {theirs!r}): they did not measure the same load",
                hint="run both modes with the same --scenario, --rate or --users",
            )


def load_story(path: Path) -> dict:
    """The story.json `opskit bench` writes next to the result folders."""
    return _json_object(path, "story")


def load_soak(path: Path) -> dict:
    """The soak.json `opskit soak` writes into its --out folder."""
    soak = _json_object(path, "soak")
    if "writes_committed" not in soak:
        raise BadInput(f"soak file {path} is not an `opskit soak` result (no writes_committed)")
    return soak


def _json_object(path: Path, what: str) -> dict:
    try:
        found = json.loads(Path(path).read_text())
    except (FileNotFoundError, IsADirectoryError):
        raise BadInput(f"{what} file {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BadInput(f"{what} file {path} is not valid JSON: {error}") from None
    if not isinstance(found, dict):
        raise BadInput(f"{what} file {path} does not hold a JSON object")
    return found


# ---------------------------------------------------------------------------- rendering


def render(
    before_dir: Path,
    after_dir: Path,
    out: Path,
    *,
    story: dict | None = None,
    soak: dict | None = None,
    fmt: str = "html",
) -> Path:
    """Compare the two result folders and write the report to `out` (HTML or Markdown).

    The file appears whole or not at all: it is written next to `out` under a temporary name
    and renamed. Raises BadInput for a missing, malformed or mismatched folder and for a run
    without any successful request.
    """
    if fmt not in FORMATS:
        raise BadInput(f"unknown report format {fmt!r}", hint=f"choose one of {FORMATS}")
    before = load_runs(Path(before_dir), "before")
    after = load_runs(Path(after_dir), "after")
    _require_same(before[0], after[0])
    comparison = stats.compare([r.metrics for r in before], [r.metrics for r in after])
    context = _context(before, after, comparison, story or {})
    context["soak"] = _soak_view(soak or {})
    text = _jinja(fmt).get_template(f"report.{fmt}.j2").render(**context)
    if fmt == "html" and len(text.encode()) > MAX_HTML_BYTES:
        raise ProblemFound(
            f"the report would be {len(text.encode()) / 1e6:.1f} MB, over the 2 MB limit",
            hint="fewer endpoints or runs per report",
        )
    return _write_atomically(Path(out), text)


def _write_atomically(out: Path, text: str) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, out)
    finally:
        temporary.unlink(missing_ok=True)
    return out


def _jinja(fmt: str) -> Environment:
    """Templates with the report's number filters; HTML autoescaped.

    Lenient about missing keys (they render as "n/a" through the filters or not at all): the
    story and meta.json come from other tools and may lack a field without spoiling a report.
    """
    environment = Environment(
        loader=PackageLoader("opskit", "templates"),
        autoescape=fmt == "html",
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters.update(
        ms=format_ms, times=format_times, percent=format_percent, number=format_number
    )
    return environment


def _finite(value: object) -> float | None:
    """The value as a float when it is a finite number, else None (NaN, None, text, missing)."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        return None
    return float(value) if math.isfinite(value) else None


def format_ms(value: object) -> str:
    ms = _finite(value)
    if ms is None:
        return "n/a"
    if ms < 10:
        return f"{ms:.2f} ms"
    if ms < 100:
        return f"{ms:.1f} ms"
    return f"{ms:,.0f} ms"


def format_times(value: object) -> str:
    """A speed-up factor: 12.3x."""
    factor = _finite(value)
    if factor is None:
        return "n/a"
    return f"{factor:.2f}x" if factor < 10 else f"{factor:.1f}x"


def format_percent(value: object) -> str:
    share = _finite(value)
    return "n/a" if share is None else f"{share * 100:.2f}%"


def format_number(value: object) -> str:
    number = _finite(value)
    if number is None:
        return "n/a"
    if number.is_integer():
        return f"{int(number):,}"
    return f"{number:,.3g}" if abs(number) < 100 else f"{number:,.0f}"


_FORMATTERS = {"ms": format_ms, "req/s": format_number, "": format_percent}


# ---------------------------------------------------------------------------- what it shows


def _speedup(comparison: stats.MetricComparison | None) -> dict:
    """before / after of a latency metric, with its interval: > 1 means faster."""
    if comparison is None or not (comparison.before and comparison.after):
        return {
            "value": math.nan,
            "low": math.nan,
            "high": math.nan,
            "significant": False,
            "marker": "",
        }

    def inverse(value: float) -> float:
        return 1.0 / value if value and math.isfinite(value) else math.nan

    value = inverse(comparison.ratio)
    return {
        "value": value,
        "low": inverse(comparison.ratio_high),
        "high": inverse(comparison.ratio_low),
        "significant": comparison.significant,
        "marker": "~" if math.isfinite(value) and not comparison.significant else "",
    }


def _verdict(comparison: stats.MetricComparison | None) -> tuple[str, str]:
    """The headline word for an endpoint (from its p50) and its CSS class."""
    if comparison is None or (comparison.before is None and comparison.after is None):
        return "no successful request", "only"
    if comparison.before is None:
        return "after only", "only"
    if comparison.after is None:
        return "before only", "only"
    if not comparison.significant:
        return "~", "same"
    return ("faster", "faster") if comparison.improved else ("slower", "slower")


def _headline(comparison: stats.Comparison, endpoints: list[str]) -> list[dict]:
    rows = []
    for endpoint in endpoints:
        p50, p99 = comparison.get(endpoint, "p50_ms"), comparison.get(endpoint, "p99_ms")
        verdict, verdict_class = _verdict(p50)
        rows.append(
            {
                "endpoint": endpoint,
                "before_p50": p50.before.median if p50 and p50.before else None,
                "after_p50": p50.after.median if p50 and p50.after else None,
                "before_p99": p99.before.median if p99 and p99.before else None,
                "after_p99": p99.after.median if p99 and p99.after else None,
                "p50": _speedup(p50),
                "p99": _speedup(p99),
                "verdict": verdict,
                "verdict_class": verdict_class,
            }
        )
    return rows


def _claims(headline: list[dict]) -> list[dict]:
    """Each claim of the write-up beside the measured p50 speed-up of its endpoints."""
    rows = []
    for claim in CLAIMS:
        measured = [row for row in headline if claim.matches(row["endpoint"])]
        for row in measured or [None]:
            rows.append(
                {
                    "claim": claim,
                    "endpoint": row["endpoint"] if row else claim.path,
                    "measured": row["p50"] if row else None,
                    "before_p50": row["before_p50"] if row else None,
                    "after_p50": row["after_p50"] if row else None,
                    "assessment": _assess(claim, row["p50"] if row else None),
                }
            )
    return rows


def _assess(claim: Claim, measured: dict | None) -> str:
    """Where the claimed factor falls against the measured speed-up's 95% interval.

    Judged on the interval, not on the Holm verdict: a claim of 12x is refuted by a measured
    [1.9x, 2.3x] even when too few runs were made to call the 2x itself significant.
    """
    if measured is None or not math.isfinite(measured["value"]):
        return "not measured"
    low, high = measured["low"], measured["high"]
    if math.isfinite(high) and claim.speedup > high:
        return "overstated: the claim is above the measured 95% interval"
    if math.isfinite(low) and claim.speedup < low:
        return "understated: the claim is below the measured 95% interval"
    return "consistent: the claim is inside the measured 95% interval"


def _details(comparison: stats.Comparison, endpoints: list[str]) -> list[dict]:
    """Every metric of every endpoint, formatted: medians, intervals, ratio, p-values."""
    details = []
    for endpoint in endpoints:
        rows = []
        for metric in stats.METRICS.values():
            c = comparison.get(endpoint, metric.name)
            if c is None:
                continue
            value = _FORMATTERS[metric.unit]
            sides = [
                (value(ci.median), f"[{value(ci.low)}, {value(ci.high)}] ({ci.confidence:.0%})")
                if ci
                else ("n/a", "")
                for ci in (c.before, c.after)
            ]
            rows.append(
                {
                    "label": metric.label,
                    "sides": sides,
                    "ratio": f"{format_number(c.ratio)} "
                    f"[{format_number(c.ratio_low)}, {format_number(c.ratio_high)}]",
                    "p": format_number(c.p_value),
                    "p_adjusted": format_number(c.p_adjusted),
                    "change": _change(c),
                }
            )
        details.append({"endpoint": endpoint, "rows": rows})
    return details


def _change(c: stats.MetricComparison) -> str:
    """The significant change (relative; percentage points for the error rate), else "~"."""
    if not c.significant:
        return "~"
    if c.metric == "error_rate":
        return f"{(c.after.median - c.before.median) * 100:+.2f} pp"
    return f"{c.ratio - 1.0:+.0%}" if math.isfinite(c.ratio) else "changed"


def _spectrum_charts(before: list[Run], after: list[Run], endpoints: list[str]) -> list[dict]:
    """Per endpoint: latency at each percentile, one thin line per run, before vs after."""
    quantiles = charts.spectrum_quantiles()
    xs = [charts.spectrum_x(q) for q in quantiles]
    result = []
    for endpoint in endpoints:
        series = []
        for runs, color in ((before, charts.BEFORE_COLOR), (after, charts.AFTER_COLOR)):
            for run in runs:
                latency = _ok_latency(run, endpoint)
                if len(latency):
                    label = f"{run.side}{', flagged run' if run.flags else ''}"
                    ys = np.quantile(latency, quantiles)
                    series.append(charts.Series(label, xs, ys, color, dashed=bool(run.flags)))
        chart = charts.line_chart(
            series,
            x=charts.Axis("percentile", ticks=charts.SPECTRUM_TICKS),
            y=charts.Axis("latency (ms, log)", log=True),
            title=f"{endpoint}: latency by percentile, one line per run",
        )
        result.append({"caption": endpoint, "svg": chart})
    return result


def _ok_latency(run: Run, endpoint: str) -> np.ndarray:
    measured = run.measured
    rows = measured[(measured["endpoint"] == endpoint) & measured["ok"].astype(bool)]
    return rows["latency_ms"].to_numpy(dtype=float)


def _timeline_charts(runs: list[Run], side: str) -> list[dict]:
    """p50/p99 over time per run (all endpoints), and achieved vs target rate, errors, CPU."""
    latency, rate, cpu, errors = [], [], [], []
    warmup_s = max(float(run.meta["warmup_s"]) for run in runs)
    has_errors = False
    for i, run in enumerate(runs):
        color = charts.RUN_COLORS[i % len(charts.RUN_COLORS)]
        label = f"{run.name}{' (flagged)' if run.flags else ''}"
        bucket_s, per_second = _latency_per_second(run)
        latency.append(charts.Series(label, per_second.index, per_second["p50"], color))
        latency.append(charts.Series(label, per_second.index, per_second["p99"], color, True))
        seconds = run.seconds.sort_values("second")
        rate.append(charts.Series(label, seconds["second"], seconds["achieved_rate"], color))
        if seconds["target_rate"].notna().any():
            rate.append(
                charts.Series("target", seconds["second"], seconds["target_rate"], "#111827", True)
            )
        cpu.append(charts.Series(label, seconds["second"], seconds["generator_cpu_pct"], color))
        errors.append(charts.Series(label, seconds["second"], seconds["errors"], color))
        has_errors = has_errors or bool(seconds["errors"].sum())
    shade = [(0.0, warmup_s, "warm-up (discarded)")]
    time_axis = charts.Axis("seconds since start")
    figures = [
        (
            f"{side}: p50 (solid) and p99 (dashed) over time, all endpoints",
            latency,
            charts.Axis(f"latency (ms, log; {bucket_s} s buckets)", log=True),
            (),
        ),
        (
            f"{side}: achieved vs target rate",
            rate,
            charts.Axis("requests/s", include_zero=True),
            (),
        ),
        (
            f"{side}: load generator CPU",
            cpu,
            charts.Axis("CPU % (100 = one core)", include_zero=True),
            [(70.0, "70%: results suspect above")],
        ),
    ]
    if has_errors:
        figures.append(
            (f"{side}: errors per second", errors, charts.Axis("errors/s", include_zero=True), ())
        )
    return [
        {
            "caption": caption,
            "svg": charts.line_chart(
                series, x=time_axis, y=y_axis, title=caption, shaded=shade, guides=guides
            ),
        }
        for caption, series, y_axis, guides in figures
    ]


def _latency_per_second(run: Run) -> tuple[int, pd.DataFrame]:
    """p50 and p99 of successful requests per time bucket since the run started."""
    ok = run.requests[run.requests["ok"].astype(bool)]
    elapsed = ok["started_at"] - float(run.meta["started_at"])
    duration = max(float(run.meta["finished_at"]) - float(run.meta["started_at"]), 1.0)
    bucket_s = max(1, math.ceil(duration / TIMELINE_MAX_POINTS))
    buckets = (elapsed // bucket_s * bucket_s).rename("bucket")
    grouped = ok["latency_ms"].groupby(buckets)
    frame = pd.DataFrame({"p50": grouped.quantile(0.5), "p99": grouped.quantile(0.99)})
    return bucket_s, frame.sort_index()


def _run_rows(runs: list[Run]) -> list[dict]:
    rows = []
    for run in runs:
        seconds = run.seconds
        measured = seconds[seconds["second"] >= float(run.meta["warmup_s"])]
        target = measured["target_rate"].mean()
        achieved = measured["achieved_rate"].mean()
        rows.append(
            {
                "side": run.side,
                "name": run.name,
                "mode": run.meta.get("mode"),
                "requests": run.meta.get("requests_total", len(run.requests)),
                "errors": run.meta.get("errors_total", int((~run.requests["ok"]).sum())),
                "target": target,
                "achieved": achieved,
                "achieved_share": achieved / target if target else math.nan,
                "cpu": _cpu_summary(measured["generator_cpu_pct"]),
                "flags": run.flags,
            }
        )
    return rows


def _cpu_summary(cpu_pct: pd.Series) -> str:
    cpu_pct = cpu_pct.dropna()
    return f"{cpu_pct.mean():.0f}% / {cpu_pct.max():.0f}%" if len(cpu_pct) else "n/a"


def _environment_rows(before: Run, after: Run) -> list[tuple[str, str, str]]:
    """Facts about the set-up, side by side, from each side's first run's meta.json."""

    def facts(meta: dict) -> dict[str, str]:
        postgres = meta.get("postgres") or {}
        cpu = meta.get("cpu") or {}
        rows = {
            "mode": meta.get("mode"),
            "scenario": meta.get("scenario"),
            "model": meta.get("model"),
            "target rate (req/s)": meta.get("target_rate"),
            "users": meta.get("users"),
            "duration / warm-up (s)": f"{meta.get('duration_s')} / {meta.get('warmup_s')}",
            "data scale": meta.get("scale"),
            "API": _host_only(meta.get("target_url")),
            "PostgreSQL": postgres.get("version"),
            "Redis": (meta.get("redis") or {}).get("version"),
            "CPU": f"{cpu.get('model', '?')} ({cpu.get('cores', '?')} cores)",
            "opskit": f"{meta.get('opskit_version')} ({meta.get('git_commit') or 'no commit'})",
        }
        for table, count in sorted((meta.get("row_counts") or {}).items()):
            rows[f"rows: {table}"] = f"{count:,}" if isinstance(count, int) else count
        for name, value in sorted((postgres.get("settings") or {}).items()):
            rows[f"postgres {name}"] = value
        return {key: "" if value is None else str(value) for key, value in rows.items()}

    b, a = facts(before.meta), facts(after.meta)
    return [(key, b.get(key, ""), a.get(key, "")) for key in dict.fromkeys([*b, *a])]


def _host_only(url: str | None) -> str | None:
    """host:port/path of a URL: the report names the API without holding a link."""
    if not url:
        return url
    parts = urlsplit(url)
    return f"{parts.netloc}{parts.path}" if parts.netloc else url


def _story_view(story: dict) -> dict:
    """The story as the templates show it; every section may be missing or null."""
    if not story:
        return {}
    phases = [phase for phase in story.get("migrate") or [] if isinstance(phase, dict)]
    return {
        **story,
        "migrate": phases,
        "migrate_total_ms": sum(_finite(phase.get("duration_ms")) or 0 for phase in phases),
    }


def _capacity_view(capacity: object) -> dict:
    """`opskit bench --capacity`'s ramps as the templates show them: p99 against users for each
    mode with the SLO and each mode's knee, a table per mode, the views' staleness meanwhile."""
    if not isinstance(capacity, dict):
        return {}
    ramps = [
        capacity[mode]
        for mode in ("before", "after")
        if isinstance(capacity.get(mode), dict) and capacity[mode].get("steps")
    ]
    if not ramps:
        return {}
    colors = {"before": charts.BEFORE_COLOR, "after": charts.AFTER_COLOR}
    p99s = [_finite(s.get("p99_ms")) for ramp in ramps for s in ramp["steps"]]
    top = max([v for v in p99s if v is not None] or [1.0])
    slo = _finite(ramps[0].get("slo_p99_ms"))
    series, modes = [], []
    for ramp in ramps:
        mode, steps = ramp.get("mode", "?"), ramp["steps"]
        color = colors.get(mode, charts.RUN_COLORS[0])
        users = [s.get("users") for s in steps]
        series.append(
            charts.Series(
                f"{mode}: p99",
                users,
                [_finite(s.get("p99_ms")) or math.nan for s in steps],
                color,
            )
        )
        knee = ramp.get("held_users") or 0
        if knee:
            series.append(
                charts.Series(f"{mode} knee: {knee:,} users", [knee, knee], [0.1, top], color, True)
            )
        modes.append(
            {
                "mode": mode,
                "held_users": knee,
                "stopped_by": ramp.get("stopped_by"),
                "think_s": ramp.get("think_s"),
                "step_seconds": ramp.get("step_seconds"),
                "server": ramp.get("server"),
                "steps": steps,
            }
        )
    caption = "p99 latency against concurrent users (think time between requests)"
    chart = charts.line_chart(
        series,
        x=charts.Axis("users", include_zero=True),
        y=charts.Axis("p99 (ms, log)", log=True),
        title=caption,
        guides=[(slo, f"SLO: p99 {format_ms(slo)}")] if slo else (),
    )
    staleness = capacity.get("staleness")
    return {
        "caption": caption,
        "svg": chart,
        "slo_p99_ms": slo,
        "modes": modes,
        "staleness": staleness if isinstance(staleness, dict) else None,
    }


def _soak_view(soak: dict) -> dict:
    """An `opskit soak` result as the templates show it: what ran, what broke, what converged."""
    if not soak:
        return {}

    def mapping(key: str) -> dict:
        value = soak.get(key)
        return value if isinstance(value, dict) else {}

    def total(key: str) -> int | None:
        values = mapping(key)
        return (
            sum(v for v in values.values() if isinstance(v, int))
            if isinstance(soak.get(key), dict)
            else None
        )

    faults, skipped, staleness = (
        mapping("faults"),
        mapping("faults_skipped"),
        mapping("staleness_s"),
    )
    rows = [
        ("duration (s)", format_number(soak.get("duration_s"))),
        ("writers", format_number(soak.get("writers"))),
        ("writes committed", format_number(soak.get("writes_committed"))),
        ("rolled back on purpose", format_number(soak.get("writes_rolled_back"))),
        ("faults injected", ", ".join(f"{kind} ×{n}" for kind, n in faults.items()) or "none"),
        ("faults skipped", "; ".join(f"{kind}: {why}" for kind, why in skipped.items()) or "none"),
        (
            "API requests (errors)",
            f"{format_number(soak.get('api_requests'))} ({format_number(soak.get('api_errors'))})",
        ),
        ("deadlocks", format_number(soak.get("deadlocks"))),
        ("writer errors", format_number(soak.get("writer_errors"))),
        ("drift found before --fix", format_number(total("drift_before_fix"))),
        ("drift after --fix", format_number(total("drift_after_fix"))),
        ("overlapping refreshes of one view", format_number(soak.get("overlapping_refreshes"))),
        (
            "view staleness p50 / p95 / max",
            " / ".join(f"{format_number(staleness.get(q))} s" for q in ("p50", "p95", "max")),
        ),
    ]
    problems = [str(problem) for problem in soak.get("problems") or []]
    return {"rows": rows, "ok": soak.get("ok") is True and not problems, "problems": problems}


def _summary(headline: list[dict], claims: list[dict]) -> str:
    """The report in two sentences: verdict counts, and how the write-up's claims fared."""
    verdicts = Counter(row["verdict"] for row in headline)
    named = {"faster": "faster", "slower": "slower", "~": "without a significant change (~)"}
    parts = [f"{verdicts.pop(v)} {label}" for v, label in named.items() if v in verdicts]
    parts += [f"{count} {verdict}" for verdict, count in sorted(verdicts.items())]
    assessed = Counter(row["assessment"].split(":")[0] for row in claims)
    claim_parts = [f"{count} {word}" for word, count in sorted(assessed.items())]
    return (
        f"{len(headline)} endpoint{'' if len(headline) == 1 else 's'}: {', '.join(parts)}. "
        f"The original write-up's claims, one per endpoint, against the measured p50 "
        f"speed-up intervals: {', '.join(claim_parts)}."
    )


def _mode_warnings(before: list[Run], after: list[Run]) -> list[str]:
    """Folders whose runs' recorded mode contradicts their side (an A/A check has one mode)."""
    warnings = []
    for runs, side, other in ((before, "before", "after"), (after, "after", "before")):
        if {run.meta.get("mode") for run in runs} == {other}:
            warnings.append(
                f"the {side} folder holds only {other}-mode runs: are the two folders swapped?"
            )
    return warnings


def _context(before: list[Run], after: list[Run], comparison: stats.Comparison, story: dict):
    endpoints = sorted({e for run in [*before, *after] for e in run.metrics})
    headline = _headline(comparison, endpoints)
    claims = _claims(headline)
    flagged = [run for run in [*before, *after] if run.flags]
    return {
        "title": f"opskit before/after: {before[0].meta.get('scenario', '?')}",
        "meta": before[0].meta,
        "comparison": comparison,
        "alpha": stats.ALPHA,
        "summary": _summary(headline, claims),
        "mode_warnings": _mode_warnings(before, after),
        "headline": headline,
        "claims": claims,
        "details": _details(comparison, endpoints),
        "spectra": _spectrum_charts(before, after, endpoints),
        "timelines": {
            "before": _timeline_charts(before, "before"),
            "after": _timeline_charts(after, "after"),
        },
        "runs": _run_rows([*before, *after]),
        "flagged": flagged,
        "environment": _environment_rows(before[0], after[0]),
        "story": _story_view(story),
        "capacity": _capacity_view(story.get("capacity")),
        "opskit_version": __version__,
    }
