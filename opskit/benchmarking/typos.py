"""One-edit typos of real title words, and search's recall on them (docs/search.md).

A typo is one edit at a position after the first letter: a letter replaced (substitution),
dropped (deletion), added (insertion) or swapped with the next one (transposition). Recall is
the share of typos whose first page of `GET /api/search` holds a project whose title contains
the intended word; noise is the share of first-page items without the intended word at all.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

KINDS = ("substitution", "deletion", "insertion", "transposition")
LETTERS = "abcdefghijklmnopqrstuvwxyz"
MIN_WORD_LENGTH = 6  # below that, one edit can leave no trigram in common (docs/search.md)

_WORD = re.compile(r"[^\W_]+")


def words_of(text: str) -> set[str]:
    """Search's words of a text: its maximal runs of letters and digits, lower-cased."""
    return set(_WORD.findall(text.lower()))


@dataclass(frozen=True)
class Typo:
    word: str  # the intended word
    kind: str  # one of KINDS
    text: str  # what is typed


def typo(word: str, kind: str, rng: random.Random) -> str:
    """`word` with one edit of `kind` at a random position after its first letter."""
    if kind == "substitution":
        at = rng.randrange(1, len(word))
        return word[:at] + rng.choice(LETTERS.replace(word[at], "")) + word[at + 1 :]
    if kind == "deletion":
        at = rng.randrange(1, len(word))
        return word[:at] + word[at + 1 :]
    if kind == "insertion":
        at = rng.randrange(1, len(word) + 1)
        return word[:at] + rng.choice(LETTERS) + word[at:]
    if kind == "transposition":
        swappable = [at for at in range(1, len(word) - 1) if word[at] != word[at + 1]]
        if not swappable:
            return word
        at = rng.choice(swappable)
        return word[:at] + word[at + 1] + word[at] + word[at + 2 :]
    raise ValueError(f"unknown typo kind {kind!r}")


def typo_set(words: Iterable[str], rng: random.Random) -> list[Typo]:
    """One typo of each kind for each word (a typo that gives the word back is left out)."""
    typos = []
    for word in words:
        for kind in KINDS:
            text = typo(word, kind, rng)
            if text != word:
                typos.append(Typo(word, kind, text))
    return typos


@dataclass
class Recall:
    typos: int = 0
    found: int = 0  # page 1 holds a project whose title contains the intended word
    noise: float = 0.0  # mean share of page-1 items whose words lack the intended word
    misses: list[dict] = field(default_factory=list)  # {"word", "kind", "typo", "first"}

    @property
    def recall(self) -> float | None:
        return round(self.found / self.typos, 4) if self.typos else None

    def as_dict(self) -> dict:
        return {
            "typos": self.typos,
            "found": self.found,
            "recall": self.recall,
            "noise": round(self.noise, 4),
            "misses": self.misses,
        }


def recall(typos: list[Typo], first_page: Callable[[str], list[dict]]) -> Recall:
    """Recall and noise of `first_page(q)` (a search's first page of items) over `typos`."""
    result, noise = Recall(), []
    for case in typos:
        items = first_page(case.text)
        result.typos += 1
        if any(
            item["kind"] == "project" and case.word in words_of(item["title"]) for item in items
        ):
            result.found += 1
        else:
            first = [item["title"] for item in items[:3]]
            result.misses.append(
                {"word": case.word, "kind": case.kind, "typo": case.text, "first": first}
            )
        if items:
            noise.append(sum(case.word not in _item_words(item) for item in items) / len(items))
    result.noise = sum(noise) / len(noise) if noise else 0.0
    return result


def _item_words(item: dict) -> set[str]:
    """The words an item shows (title and subtitle): noise is measured on what users see."""
    return words_of(f"{item['title']} {item['subtitle'] or ''}")
