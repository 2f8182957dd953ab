"""Every CLI verb is documented in the README and in docs/interface.md, and the README starts
with the two commands."""

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
