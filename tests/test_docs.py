"""The README: every CLI verb in it, the two commands first, a front page with a true layout;
every verb has a section in docs/interface.md."""

import re
from pathlib import Path

import typer.main

from opskit.cli import app

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
INTERFACE = (ROOT / "docs" / "interface.md").read_text()


def _verbs() -> list[str]:
    return sorted(typer.main.get_command(app).commands)


def test_every_verb_is_in_the_readme():
    # the verb whole: `opskit bench-api` must not stand in for `opskit bench`
    missing = [verb for verb in _verbs() if not re.search(rf"`opskit {verb}[ `]", README)]
    assert missing == []


def test_readme_starts_with_the_two_commands():
    opening = README.split("\n\n", 3)[1]
    assert "make demo" in opening and "make test" in opening


def test_every_verb_has_a_section_in_the_interface():
    missing = [verb for verb in _verbs() if f"\n### opskit {verb}\n" not in INTERFACE]
    assert missing == []


def test_readme_is_a_front_page():
    # reference lives in docs/, dated figures in docs/measurements.md
    assert len(README.splitlines()) <= 350


def test_readme_layout_names_every_part_of_the_package():
    layout = README.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    package = ROOT / "opskit"
    parts = sorted(path.parent.name for path in package.glob("*/__init__.py"))
    missing = [part for part in parts if f"  {part}/ " not in layout]
    assert parts and missing == []
