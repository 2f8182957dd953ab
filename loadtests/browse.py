"""Scenario `browse`: anonymous visitors only (the read path the materialized views serve)."""

from personas import BrowsingVisitor  # noqa: F401  (Locust runs every user class in this module)
