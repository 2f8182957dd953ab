"""/openapi.json cannot drift from the routes, and its request schemas are what the server checks."""

from __future__ import annotations

import re

import pytest

from opskit.app.api import ROUTES, rfc3339_instant
from opskit.app.endpoints import MODES
from opskit.app.openapi import BLANK, MAX_ID, NOT_BLANK_PATTERN, openapi_document


def served() -> dict[tuple[str, str], str]:
    """(path, method) -> the endpoint's name, for every route (HEAD comes with GET)."""
    return {
        (route.path, method.lower()): route.endpoint.__name__
        for route in ROUTES
        for method in route.methods - {"HEAD"}
    }


def documented(document: dict) -> dict[tuple[str, str], str]:
    """(path, method) -> operationId, for every operation of the document."""
    return {
        (path, method): operation["operationId"]
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
    }


@pytest.mark.parametrize("mode", MODES)
def test_the_document_lists_every_route_with_its_methods_and_nothing_else(mode):
    assert documented(openapi_document(mode)) == served()


def test_every_path_parameter_is_documented_and_every_documented_one_is_in_the_path():
    for path, operations in openapi_document("after")["paths"].items():
        in_path = set(re.findall(r"{(\w+)}", path))
        for operation in operations.values():
            parameters = operation.get("parameters", [])
            assert {p["name"] for p in parameters if p["in"] == "path"} == in_path, path
            assert all(p["required"] for p in parameters if p["in"] == "path"), path


def test_every_link_names_an_operation_and_its_parameters():
    document = openapi_document("after")
    operations = {
        operation["operationId"]: operation
        for methods in document["paths"].values()
        for operation in methods.values()
    }
    links = [
        link
        for methods in document["paths"].values()
        for operation in methods.values()
        for response in operation["responses"].values()
        for link in response.get("links", {}).values()
    ]
    assert links
    for link in links:
        target = operations[link["operationId"]]
        assert set(link["parameters"]) <= {p["name"] for p in target["parameters"]}, link


def test_every_integer_input_is_a_bigint_and_bodies_say_extra_properties_are_ignored():
    assert MAX_ID == 2**63 - 1
    for path, methods in openapi_document("after")["paths"].items():
        for operation in methods.values():
            inputs = [parameter["schema"] for parameter in operation.get("parameters", [])]
            body = operation.get("requestBody")
            if body:
                schema = body["content"]["application/json"]["schema"]
                assert schema["additionalProperties"] is True, path
                inputs += schema["properties"].values()
            for schema in inputs:
                if "integer" in schema.get("type", ()):  # "integer" or ["integer", "null"]
                    assert schema["minimum"] >= 1 and schema["maximum"] <= MAX_ID, path


@pytest.mark.parametrize(
    ("text", "allowed"),
    [
        ("a", True),
        (" \t a \n", True),
        ("\u00a0", True),  # not a C0 character: text, as the server keeps it
        ("", False),
        (" ", False),
        ("\x1f\x1c\r\n", False),
        ("a\x00", False),
    ],
)
def test_the_not_blank_pattern_is_the_servers_rule(text, allowed):
    assert bool(re.search(NOT_BLANK_PATTERN, text)) is allowed
    assert (bool(text.strip(BLANK)) and "\x00" not in text) is allowed


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-01T12:00:00Z",
        "2026-11-01t12:00:00z",
        "2026-11-01T12:00:00",  # without an offset: UTC, as the server always read it
        "2026-11-01T12:00:00.123456789-07:30",
        "1990-12-31T23:59:60Z",
        "0001-01-01T00:00:00+23:59",
        "9999-12-31T23:59:59-23:59",
    ],
)
def test_rfc3339_date_times_are_instants(text):
    assert rfc3339_instant(text).utcoffset() is not None


def test_a_date_time_without_an_offset_is_utc():
    assert rfc3339_instant("2026-11-01T12:00:00") == rfc3339_instant("2026-11-01T12:00:00Z")


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-01",
        "2026-11-01 12:00:00Z",
        "2026-11-01T12:00Z",
        "2026-11-01T12:00:00+0200",
        "2026-11-01T12:00:00+24:00",
        "2026-13-01T12:00:00Z",
        "2026-11-31T12:00:00Z",
        "2026-11-01T12:00:60Z",  # a leap second is 23:59:60 in UTC
        "0000-01-01T00:00:00Z",  # year 0: RFC 3339 allows it, Python's datetime cannot hold it
        "9999-12-31T23:59:60Z",
        "\uff12\uff10\uff12\uff16-11-01T12:00:00Z",  # fullwidth digits
    ],
)
def test_other_text_is_not_an_rfc3339_instant(text):
    with pytest.raises(ValueError):
        rfc3339_instant(text)
