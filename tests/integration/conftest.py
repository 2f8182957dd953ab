"""Fixtures shared by the API's integration tests."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from opskit.app.api import create_app
from tests.integration.test_api import settings_for


@pytest.fixture(params=["before", "after"])
def client(request, migrated_db_url, redis_url, redis_prefix, tmp_path):
    """The API in each mode, in process, on the migrated tiny database."""
    app = create_app(
        settings_for(tmp_path, redis_prefix), request.param, migrated_db_url, redis_url, pool_size=2
    )
    with TestClient(app) as client:
        yield client
