"""The architecture as the tree shows it: parts as folders, imports flowing one way, light start-up.

CLI -> benchmarking -> app -> engine -> core: a part imports only parts to its right (and the
shared `opskit.sql` loader), checked on every import statement, at the top or inside a function.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from opskit.cli import app

PACKAGE = Path(__file__).resolve().parents[1] / "opskit"
PARTS = ("core", "engine", "app", "benchmarking", "cli")
# What each part may import besides itself (and `opskit`, `opskit.sql`).
ALLOWED = {
    "core": set(),
    "engine": {"core"},
    "app": {"core", "engine"},
    "benchmarking": {"core", "engine", "app"},
    "cli": {"core", "engine", "app", "benchmarking"},
}
HEAVY = ("numpy", "pandas", "pyarrow", "scipy", "locust", "gevent", "httpx")
WEB = ("starlette", "uvicorn")
MAX_MODULE_LINES = 800
MAX_TOP_LEVEL_MODULES = 10


def _opskit_imports(path: Path) -> set[str]:
    """Every `opskit.<part>` a module imports, wherever the import statement sits."""
    parts = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            pieces = name.split(".")
            if pieces[0] == "opskit" and len(pieces) > 1 and pieces[1] in PARTS:
                parts.add(pieces[1])
    return parts


@pytest.mark.parametrize("part", PARTS)
def test_imports_flow_one_way(part):
    wrong = {
        str(path.relative_to(PACKAGE)): sorted(imported - ALLOWED[part] - {part})
        for path in (PACKAGE / part).rglob("*.py")
        if (imported := _opskit_imports(path)) - ALLOWED[part] - {part}
    }
    assert wrong == {}, f"{part} may import only {sorted(ALLOWED[part])}"


def test_modules_are_small_and_grouped_into_parts():
    too_long = {
        str(path.relative_to(PACKAGE)): lines
        for path in PACKAGE.rglob("*.py")
        if (lines := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert too_long == {}
    top_level = sorted(path.name for path in PACKAGE.glob("*.py"))
    assert len(top_level) <= MAX_TOP_LEVEL_MODULES, top_level


_PROBE = """
import atexit, json, os, sys
HEAVY = {heavy!r}
out = os.fdopen(os.dup(1), "w")
atexit.register(lambda: out.write(json.dumps(sorted(m for m in HEAVY if m in sys.modules))))
sys.argv = ["opskit", *{args!r}]
from opskit.cli import main
main()
"""

# Verbs run to where they need a server (an unreachable one): by then they imported what they use.
LIGHT_VERBS = {
    "--version": ["--version"],
    "--help": ["--help"],
    "env": ["env"],
    "token": ["token", "1"],
    "status": ["status"],
    "migrate": ["migrate"],
    "verify": ["verify"],
    "reconcile": ["reconcile"],
    "scheduler": ["scheduler"],
}


@pytest.mark.parametrize("verb", LIGHT_VERBS)
def test_light_verbs_start_without_heavy_libraries(verb, tmp_path):
    forbidden = HEAVY + (WEB if verb in ("migrate", "scheduler") else ())
    env = {
        **os.environ,
        "OPSKIT_HOME": str(tmp_path),
        "OPSKIT_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none?connect_timeout=1",
        "OPSKIT_REDIS_URL": "redis://127.0.0.1:1/0",
        "OPSKIT_JWT_SECRET": "a-test-secret-of-at-least-32-bytes-long",
    }
    probe = _PROBE.format(heavy=forbidden, args=LIGHT_VERBS[verb])
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120
    )
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded == [], f"opskit {verb} imported {loaded} ({done.stderr.strip()[-300:]})"


def test_the_light_verb_list_names_real_verbs():
    verbs = {command.name or command.callback.__name__ for command in app.registered_commands}
    assert {verb for verb in LIGHT_VERBS if not verb.startswith("--")} <= verbs
