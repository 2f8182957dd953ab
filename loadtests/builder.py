"""Scenario `builder`: signed-in builders only (dashboards, conversations, votes, messages)."""

from personas import SignedInBuilder  # noqa: F401  (Locust runs every user class in this module)
