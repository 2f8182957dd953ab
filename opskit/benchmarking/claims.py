"""The original write-up's claimed speed-ups, which the report compares with the measurement.

The figures are data, `claims.json` beside this module (shipped in the wheel): the write-up's
table "Performance Improvements Achieved", with its own before and after milliseconds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.resources import files

CLAIMS_FILE = "claims.json"


@dataclass(frozen=True)
class Claim:
    """A speed-up the original write-up claimed, with its own before/after figures."""

    label: str
    path: str  # method and path; matches every endpoint with that path (any query string)
    before_ms: float
    after_ms: float

    @property
    def speedup(self) -> float:
        return self.before_ms / self.after_ms

    def matches(self, endpoint: str) -> bool:
        return endpoint.split("?", 1)[0] == self.path


def _read_claims_file() -> dict:
    """claims.json as stored: the source it names, notes, and one entry per claim."""
    return json.loads(files(__package__).joinpath(CLAIMS_FILE).read_text(encoding="utf-8"))


CLAIMS = tuple(
    Claim(entry["label"], entry["endpoint"], entry["before_ms"], entry["after_ms"])
    for entry in _read_claims_file()["claims"]
)
