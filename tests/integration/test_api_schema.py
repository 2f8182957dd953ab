"""schemathesis with every check against a real `opskit serve`, in both modes.

The same run a client would make (`schemathesis run URL/openapi.json --checks all`, with a
token): coverage, fuzzing and stateful phases; no 5xx, documented status codes, content types,
headers and bodies, schema-valid requests accepted and invalid ones refused, 405 with `Allow`,
tokens enforced.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from opskit.app.auth import mint_token
from opskit.app.openapi import openapi_document
from opskit.benchmarking.api_process import api_server
from tests.integration.test_api import SECRET, settings_for

# 30 cases per operation and phase: about 10-40 s per mode on a shared 2-core machine, and deep
# enough to find a float id (390.0), a 405 without Allow and a valid request refused with 422.
EXAMPLES_PER_OPERATION = 30
SEED = 1  # the same cases every run; a failure names its seed and how to replay it
PHASES = ("coverage", "fuzzing", "stateful")  # every phase that runs without explicit examples


def schemathesis_run(url: str, token: str, report_path, cwd) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{url}/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        str(EXAMPLES_PER_OPERATION),
        "--seed",
        str(SEED),
        "--generation-database",
        "none",
        "--header",
        f"Authorization: Bearer {token}",
        "--report",
        "json",
        "--report-json-path",
        str(report_path),
        "--no-color",
    ]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["before", "after"])
def test_schemathesis_with_every_check_finds_no_failure(
    mode, request, redis_url, redis_prefix, tmp_path, monkeypatch
):
    # Before mode serves the seeded data as the app left it; after mode needs every phase.
    database_url = request.getfixturevalue("tiny_db_url" if mode == "before" else "migrated_db_url")
    monkeypatch.setenv("OPSKIT_JWT_SECRET", SECRET)  # the server's secret, inherited
    settings = settings_for(tmp_path, redis_prefix)
    report_path = tmp_path / "schemathesis.json"
    with api_server(settings, mode, database_url, redis_url, redis_prefix=redis_prefix) as url:
        run = schemathesis_run(url, mint_token(SECRET, 1, 3600), report_path, tmp_path)
    assert report_path.exists(), run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(report_path.read_text())
    failures = run.stdout[-20000:]  # the failures with curl lines to reproduce them
    assert report["failures"] == [], failures
    assert report["errors"] == [], failures
    assert report["exit_code"] == 0 and run.returncode == 0, failures
    documented = sum(len(methods) for methods in openapi_document(mode)["paths"].values())
    # schemathesis skips the document's own path (/openapi.json): every other operation ran.
    assert report["operations"]["tested"] == documented - 1, report["operations"]
    assert {phase: report["phases"][phase]["status"] for phase in PHASES} == dict.fromkeys(
        PHASES, "success"
    ), report["phases"]
