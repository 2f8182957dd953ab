"""The repository documents itself: no file names a place outside it.

A fresh clone has nothing beside it, and an installed wheel not even the clone: a file that
points at a developer's folder, at a sibling folder or at a document that is not in the tree
points at nothing. The interface is docs/interface.md, and every pointer to one of its sections
leads to one.
"""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INTERFACE = ROOT / "docs" / "interface.md"

# Folders of one machine (home and work folders, a fixed temporary path), a sibling folder of
# the checkout, and the developers' own interface document with its section citations.
OUTSIDE_REFERENCES = re.compile(
    r"(?<![\w.])/(?:work/|root/|home/\w|Users/\w|tmp/\w|var/folders/)"
    r"|\.\./shared"
    r"|\bCONTRACT\b"
)
# The only file allowed to hold such references: this one, whose examples show what the
# pattern catches.
ALLOWED = {Path(__file__).resolve()}


def _repository_files() -> list[Path]:
    """Tracked files, plus new ones git does not ignore (so they are caught before a commit)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        pytest.fail(f"cannot list the repository's files with git ({err}): run from a git clone")
    paths = (ROOT / name for name in listed.decode().split("\0") if name)
    return [path for path in paths if path.is_file()]  # a deleted file is still listed


def _read(path: Path) -> str:
    return path.read_bytes().decode("utf-8", errors="replace")


def _outside_references(text: str) -> list[str]:
    return [
        f"line {text.count(chr(10), 0, match.start()) + 1}: {match.group(0)}"
        for match in OUTSIDE_REFERENCES.finditer(text)
    ]


def test_no_file_names_a_place_outside_the_repository():
    files = _repository_files()
    assert len(files) > 50  # the listing really covers the tree
    found = []
    for path in files:
        if path.resolve() in ALLOWED:
            continue
        found += [f"{path.relative_to(ROOT)} {hit}" for hit in _outside_references(_read(path))]
    assert not found, "references to places outside the repository:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "text",
    [
        "see /work/shared/seed/x.txt",
        'Path("/root/notes.md")',
        "cd /home/alice/opskit",
        "WORK=$(mktemp -d /tmp/opskit.XXXX)",
        "The interface is `../shared/CONTRACT.md`",
        "in order (CONTRACT §4).",
        "in CONTRACT order",
    ],
)
def test_the_pattern_catches_outside_references(text):
    assert _outside_references(text)


@pytest.mark.parametrize(
    "text",
    [
        "in order (docs/interface.md §4).",
        "OPSKIT_HOME/soak/<UTC time>/",
        "reports/NAME/{before,after}",
        "GET /api/users/stats",
        "`/workers` and `/rootless`",
        "PG_BIN=/usr/lib/postgresql/15/bin",
        "postgresql://postgres@127.0.0.1:5432/opskit",
        "a contract between the app and its readers",
    ],
)
def test_the_pattern_spares_the_repositorys_own_paths(text):
    assert _outside_references(text) == []


def test_every_pointer_to_the_interface_names_a_section_of_it():
    """`docs/interface.md §4` (or `§2, §4`) in --help texts, docstrings and docs: section 4 exists."""
    sections = set(re.findall(r"^## (\d+)\. ", _read(INTERFACE), flags=re.MULTILINE))
    assert sections >= {str(n) for n in range(1, 10)}
    cited = {}
    for path in _repository_files():
        for pointer in re.findall(r"interface\.md((?:,? ?§\d+)+)", _read(path)):
            cited.setdefault(str(path.relative_to(ROOT)), set()).update(re.findall(r"\d+", pointer))
    assert cited  # the code and the README do point to it
    dangling = {name: numbers - sections for name, numbers in cited.items() if numbers - sections}
    assert dangling == {}
