"""The typo set of search's recall measurement: one edit, after the first letter."""

import random

import pytest

from opskit.benchmarking import typos


def edit_distance(a: str, b: str) -> int:
    """Optimal string alignment distance (an adjacent swap counts as one edit)."""
    d = [[max(i, j) if min(i, j) == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(
                d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1])
            )
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[len(a)][len(b)]


@pytest.mark.parametrize("kind", typos.KINDS)
@pytest.mark.parametrize("word", ["wallet", "climate", "devtools", "feedback"])
def test_a_typo_is_one_edit_of_its_kind_after_the_first_letter(word, kind):
    for seed in range(20):
        text = typos.typo(word, kind, random.Random(seed))
        assert text[0] == word[0] and text != word
        assert edit_distance(word, text) == 1
        assert len(text) - len(word) == {"deletion": -1, "insertion": 1}.get(kind, 0)


def test_the_typo_set_has_every_kind_for_every_word():
    typo_set = typos.typo_set(["bridge", "oracle", "ledger"], random.Random(1))
    assert [(t.word, t.kind) for t in typo_set] == [
        (word, kind) for word in ("bridge", "oracle", "ledger") for kind in typos.KINDS
    ]
    assert typos.typo_set(["aaaaaa"], random.Random(1))[-1].kind != "transposition"


def test_recall_counts_pages_holding_a_project_titled_with_the_word():
    typo_set = typos.typo_set(["bridge", "oracle"], random.Random(2))
    pages = {
        t.text: [{"kind": "project", "title": "Bridge Kit", "subtitle": "A bridge."}]
        if t.word == "bridge"
        else [{"kind": "chain", "title": "Oracle Chain 3", "subtitle": "oracle-3"}]
        for t in typo_set
    }
    found = typos.recall(typo_set, pages.__getitem__)
    assert (found.typos, found.found, found.recall, found.noise) == (8, 4, 0.5, 0.0)
    assert {miss["word"] for miss in found.misses} == {"oracle"}
