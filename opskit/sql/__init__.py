"""Named SQL blocks loaded once from the `.sql` files beside this module.

A file holds blocks that each start with a line `-- name: some_name --`; the text up to the next
such line is the query (procrastinate's `sql/queries.sql` convention).
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

SQL_DIR = Path(__file__).parent
_NAME_LINE = re.compile(r"^-- name: (\w+) --$", re.MULTILINE)


def parse_named_blocks(text: str) -> dict[str, str]:
    """Split a file's text into {name: query}; text before the first name line is ignored."""
    parts = _NAME_LINE.split(text)
    blocks: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in blocks:
            raise ValueError(f"query name {name!r} appears twice")
        blocks[name] = body.strip()
    return blocks


@cache
def queries(filename: str) -> dict[str, str]:
    """The named blocks of `opskit/sql/<filename>`, read once per process."""
    return parse_named_blocks((SQL_DIR / filename).read_text())


def script(filename: str) -> str:
    """The whole text of `opskit/sql/<filename>` (for scripts run as one unit)."""
    return (SQL_DIR / filename).read_text()
