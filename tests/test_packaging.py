"""The wheel's metadata tells the truth: what the code imports is declared, what is declared is
used, every floor is pinned in the constraints file CI installs the wheel with, and every
package folder ships."""

from __future__ import annotations

import ast
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
FLOORS = ROOT / ".ci" / "floors.txt"
# Declared without being imported, and why.
USED_BY_NAME = {
    "uvloop": "uvicorn.run(loop='uvloop')",
    "httptools": "uvicorn.run(http='httptools')",
}
# Distributions that extras bring, pinned in the floors file as well.
EXTRA_DISTRIBUTIONS = {("psycopg", "binary"): "psycopg-binary", ("redis", "hiredis"): "hiredis"}
# Runtime code: the package and the folders shipped inside it.
SOURCES = [ROOT / "opskit", ROOT / "migrations", ROOT / "loadtests"]
LOCAL_MODULES = {"opskit", "personas"}  # personas: the scenarios' shared module, beside them


def _requirements() -> dict[str, Requirement]:
    reqs = [Requirement(line) for line in PYPROJECT["project"]["dependencies"]]
    return {canonicalize_name(req.name): req for req in reqs}


def _floors() -> dict[str, str]:
    pins = {}
    for line in FLOORS.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version
    return pins


def _imported_top_level_modules() -> set[str]:
    modules = set()
    for source in SOURCES:
        for path in source.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    modules.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    modules.add(node.module.split(".")[0])
    return modules - set(sys.stdlib_module_names) - LOCAL_MODULES


def test_every_import_is_declared_and_every_declaration_imported():
    distributions = packages_distributions()
    declared = set(_requirements())
    undeclared, used = [], set()
    for module in sorted(_imported_top_level_modules()):
        assert module in distributions, f"{module} is imported but not installed"
        # a module may come from several distributions (e.g. a package and its -slim twin)
        providers = {canonicalize_name(dist) for dist in distributions[module]}
        if providers & declared:
            used |= providers & declared
        else:
            undeclared.append(f"{module} (from {', '.join(sorted(providers))})")
    assert undeclared == [], "imported at run time, missing from [project.dependencies]"
    unused = sorted(declared - used - set(USED_BY_NAME))
    assert unused == [], "declared in [project.dependencies], imported nowhere"


def test_floors_file_pins_every_dependency_at_its_declared_floor():
    floors = _floors()
    declared = {}
    for name, req in _requirements().items():
        minimum = [spec.version for spec in req.specifier if spec.operator == ">="]
        declared[name] = minimum[0] if minimum else None
        for extra in req.extras:  # the extras' C parts are pinned too
            dist = EXTRA_DISTRIBUTIONS.get((name, extra), f"{name}[{extra}]")
            declared[dist] = floors.get(dist)
    mismatched = {
        name: (declared.get(name), floors.get(name))
        for name in declared.keys() | floors.keys()
        if declared.get(name) is None
        or floors.get(name) is None
        or Version(declared[name]) != Version(floors[name])
    }
    assert mismatched == {}, "(pyproject floor, .ci/floors.txt pin)"


def test_every_package_folder_ships():
    setuptools = PYPROJECT["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    mapped = setuptools["package-dir"]
    on_disk = {
        ".".join(path.parent.relative_to(ROOT).parts)
        for path in (ROOT / "opskit").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    on_disk |= set(mapped)
    assert on_disk - listed == set(), (
        "folders under opskit/ missing from [tool.setuptools] packages"
    )
    assert all(not name.startswith(("migrations", "loadtests")) for name in listed)
