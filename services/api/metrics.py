"""The API server's request metrics: how many requests, with which outcome, and how long.

``operation`` is the first top-level field of the request's operation (``getRuns``,
``createRun``, ...) when the schema has it, else ``unknown`` (a body that did not parse, a key
refused before parsing, a field the schema lacks): its values are bounded by the schema, never
by what a client sends. ``outcome`` is the HTTP status class: ``ok``, ``client_error``,
``server_error``.
"""

from __future__ import annotations

from graphql import DocumentNode, FieldNode, GraphQLSchema, OperationDefinitionNode
from prometheus_client import Counter, Histogram

from services.core.metrics import REGISTRY

UNKNOWN = "unknown"

REQUESTS = Counter(
    "runplane_api_requests",
    "GraphQL requests over HTTP, by operation (the first top-level field) and outcome.",
    ["operation", "outcome"],
    registry=REGISTRY,
)
DURATION = Histogram(
    "runplane_api_request_duration_seconds",
    "Time from a request's arrival to its answer, by operation.",
    ["operation"],
    registry=REGISTRY,
)


def operation_of(document: DocumentNode | None, schema: GraphQLSchema) -> str:
    """The first top-level field of the document's first operation, if the schema has it."""
    if document is None:
        return UNKNOWN
    for definition in document.definitions:
        if not isinstance(definition, OperationDefinitionNode):
            continue
        root = schema.get_root_type(definition.operation)
        for selection in definition.selection_set.selections:
            if isinstance(selection, FieldNode):
                name = selection.name.value
                return name if root is not None and name in root.fields else UNKNOWN
        return UNKNOWN
    return UNKNOWN


def outcome_of(status: int) -> str:
    if status < 400:
        return "ok"
    return "client_error" if status < 500 else "server_error"


def observe(operation: str, status: int, seconds: float) -> None:
    REQUESTS.labels(operation, outcome_of(status)).inc()
    DURATION.labels(operation).observe(seconds)
