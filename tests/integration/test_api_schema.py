"""Generated requests from /openapi.json (schemathesis): no 5xx, answers match the document."""

from __future__ import annotations

import hypothesis
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.testclient import TestClient

from opskit.app.api import create_app
from tests.integration.test_api import auth, settings_for

EXAMPLES_PER_OPERATION = 12
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["before", "after"])
def test_generated_requests_get_no_5xx_and_documented_answers(
    mode, migrated_db_url, redis_url, redis_prefix, tmp_path
):
    app = create_app(
        settings_for(tmp_path, redis_prefix), mode, migrated_db_url, redis_url, pool_size=2
    )
    headers = auth(1)  # a user of the tiny data; tokenless operations ignore it
    with TestClient(app) as client:
        schema = schemathesis.openapi.from_dict(client.get("/openapi.json").json())
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) == 19
        for operation in operations:

            @hypothesis.given(case=operation.as_strategy())
            @hypothesis.settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(hypothesis.HealthCheck),
            )
            def check(case) -> None:
                kwargs = case.as_transport_kwargs(headers=headers)
                kwargs.pop("url", None)
                response = client.request(
                    kwargs.pop("method"),
                    case.formatted_path,
                    params=kwargs.get("params"),
                    headers=kwargs.get("headers"),
                    json=kwargs.get("json"),
                    content=kwargs.get("content") or kwargs.get("data"),
                )
                case.validate_response(response, checks=CHECKS)

            check()
