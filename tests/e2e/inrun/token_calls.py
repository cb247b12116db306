"""Run inside a rank (stdlib only): what a run's own code may and may not do with its token.

It speaks to ``$MOSAICML_API_ENDPOINT`` with ``Authorization: Bearer <the token in
$MOSAICML_ACCESS_TOKEN_FILE>``, as mcli does in access-token mode, prints one line
``RESULT <json>`` (HTTP status and first error of each call; never the token), then waits until
the file ``$RELEASE`` exists (or two minutes pass) and exits 0.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from typing import Any

ENDPOINT = os.environ["MOSAICML_API_ENDPOINT"]
with open(os.environ["MOSAICML_ACCESS_TOKEN_FILE"]) as file:
    TOKEN = file.read().strip()
RUN, OTHER = os.environ["RUN_NAME"], os.environ["OTHER"]
RUN_FIELDS = "id name createdByEmail status details { metadata }"


def call(query: str, variables: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        ENDPOINT,
        data=json.dumps({"query": query, "variables": variables}).encode(),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, body = response.status, json.load(response)
    except urllib.error.HTTPError as error:
        status, body = error.code, json.load(error)
    errors = body.get("errors") or []
    return {
        "status": status,
        "error": errors[0]["message"] if errors else None,
        "data": body.get("data"),
    }


def runs(name: str) -> dict[str, Any]:
    return call(
        "query R($d: GetRunsPaginatedInput!) { getRunsPaginated(getRunsPaginatedData: $d) { runs { "
        + RUN_FIELDS
        + " } } }",
        {"d": {"filters": {"name": {"in": [name]}}}},
    )


def on_run(mutation: str, name: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
    """``mutation`` of run ``name``; ``data``: its one more argument, ``{"argName": (type,
    value)}``."""
    (arg, (kind, value)), *_ = (data or {"": ("", None)}).items()
    declared, passed = (f", ${arg}: {kind}", f", {arg}: ${arg}") if arg else ("", "")
    return call(
        f"mutation M($d: GetRunsInput!{declared}) {{ {mutation}(getRunsData: $d{passed}) {{ "
        + RUN_FIELDS
        + " } }",
        {"d": {"filters": {"name": {"in": [name]}}}, **({arg: value} if arg else {})},
    )


def metadata(name: str, values: dict[str, Any]) -> dict[str, Any]:
    data = ("UpdateRunMetadataInput!", {"metadata": values})
    return on_run("updateRunMetadata", name, {"updateRunMetadataData": data})


def child(name: str, parent: str) -> dict[str, Any]:
    run_input = {
        "runName": name,
        "image": "python:3.11",
        "command": "echo child of $RUN_NAME",
        "compute": {"cluster": "local", "gpus": 0},
        "parentName": parent,
    }
    return call(
        "mutation C($c: CreateRunInput!) { createRun(createRunData: $c) { name } }",
        {"c": {"runInput": run_input}},
    )


result = {
    "whoami": call("query { whoami { name role run attempt } }", {}),
    "own": runs(RUN),
    "other": runs(OTHER),
    "metadata": metadata(RUN, {"mosaicml/training_progress": "[epoch=1/2]"}),
    "metadata_other": metadata(OTHER, {"owned": True}),
    "stop_own": on_run("stopRuns", RUN),
    "users": call("query { users { name } }", {}),
    "child": child("child", RUN),
    "child_of_other": child("stray", OTHER),
}
print("RESULT " + json.dumps(result), flush=True)
deadline = time.monotonic() + 120
while not os.path.exists(os.environ["RELEASE"]) and time.monotonic() < deadline:
    time.sleep(0.2)  # allowed: polling inside a deadline loop (the release file)
