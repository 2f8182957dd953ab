"""The data sizes `opskit seed` makes: row targets per table, and the range of seeds.

Kept apart from `seed` (which needs numpy) so that the CLI can list them without loading it.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_SEED = 2**31 - 1


@dataclass(frozen=True)
class Scale:
    """Row targets for one data size (users / projects / votes / messages and the rest)."""

    users: int
    projects: int
    votes: int
    messages: int
    comments: int
    follows: int
    chains: int
    chain_members: int
    chain_posts: int
    chain_post_replies: int
    intro_requests: int


SCALES: dict[str, Scale] = {
    "tiny": Scale(200, 60, 2_000, 2_000, 600, 1_000, 6, 400, 60, 180, 60),
    "small": Scale(5_000, 2_000, 100_000, 50_000, 25_000, 25_000, 40, 10_000, 1_000, 3_000, 1_500),
    "medium": Scale(
        100_000,
        20_000,
        2_000_000,
        1_000_000,
        500_000,
        500_000,
        400,
        200_000,
        20_000,
        60_000,
        30_000,
    ),
    "large": Scale(
        1_000_000,
        200_000,
        20_000_000,
        10_000_000,
        5_000_000,
        5_000_000,
        2_000,
        2_000_000,
        200_000,
        600_000,
        300_000,
    ),
}
