"""Scenario `mixed`: four anonymous visitors for every signed-in builder (the personas' weights)."""

from personas import BrowsingVisitor, SignedInBuilder  # noqa: F401  (Locust runs both)
