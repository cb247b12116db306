"""The API's request metrics: an operation named by the schema, never by what a client sends."""

from __future__ import annotations

import pytest
from graphql import parse

from services.api import metrics
from services.api.app import schema
from services.core.metrics import REGISTRY

SCHEMA = schema()


@pytest.mark.parametrize(
    ("query", "operation"),
    [
        ("{ whoami { name } }", "whoami"),
        ("query Mine { users { name } whoami { name } }", "users"),
        ("mutation { deleteRuns(getRunsData: {}) { name } }", "deleteRuns"),
        ("{ aFieldNoSchemaHas }", metrics.UNKNOWN),
        ("fragment F on Principal { name } { whoami { ...F } }", "whoami"),
    ],
)
def test_the_operation_is_the_first_top_level_field_the_schema_has(
    query: str, operation: str
) -> None:
    assert metrics.operation_of(parse(query), SCHEMA) == operation


def test_a_request_that_did_not_parse_is_unknown() -> None:
    assert metrics.operation_of(None, SCHEMA) == metrics.UNKNOWN


def test_the_outcome_is_the_status_class() -> None:
    assert [metrics.outcome_of(s) for s in (200, 400, 401, 413, 500, 503)] == [
        "ok",
        "client_error",
        "client_error",
        "client_error",
        "server_error",
        "server_error",
    ]


def test_a_request_is_counted_and_timed_under_its_operation() -> None:
    labels = {"operation": "whoami", "outcome": "client_error"}
    before = REGISTRY.get_sample_value("runplane_api_requests_total", labels) or 0
    timed = {"operation": "whoami"}
    count = REGISTRY.get_sample_value("runplane_api_request_duration_seconds_count", timed) or 0
    metrics.observe("whoami", 401, 0.25)
    assert REGISTRY.get_sample_value("runplane_api_requests_total", labels) == before + 1
    after = REGISTRY.get_sample_value("runplane_api_request_duration_seconds_count", timed)
    assert after == count + 1
