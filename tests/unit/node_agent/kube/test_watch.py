"""The watch loop over a recorded sequence of watch events: resumes from the last
resourceVersion, re-lists on 410 Gone (as an ERROR event or as the request's answer), and
reports a Pod deleted during the gap as deleted.

The fake stands in for the API server only: it answers each call with the next recorded
answer, and records what it was asked.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from services.node_agent.kube.watch import Gone, Json, PodWatch, WatchError
from tests.unit.node_agent.kube.pods import recorded, with_version

GONE_EVENT = {
    "type": "ERROR",
    "object": {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "too old resource version: 4817100 (4818533)", "reason": "Expired",
        "code": 410,
    },
}  # fmt: skip


def pod(case: str, version: int, name: str = "rp-a-0-0") -> dict[str, Any]:
    found = with_version(recorded(case), version)
    found["metadata"]["name"] = name
    return found


def event(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "object": obj}


def bookmark(version: int) -> dict[str, Any]:
    return {"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1",
            "metadata": {"resourceVersion": str(version)}}}  # fmt: skip


class FakeApi:
    """Answers ``list_pods`` and ``watch_pods`` with the next recorded answer; an exception
    in the script is raised; when the script runs out, the watch is stopped."""

    def __init__(self, lists: list[tuple[list[Json], str]], watches: list[Any]) -> None:
        self.lists = lists
        self.watches = watches
        self.calls: list[tuple[str, str | None]] = []
        self.watch: PodWatch | None = None

    def list_pods(self) -> tuple[list[Json], str]:
        self.calls.append(("list", None))
        return self.lists.pop(0)

    def watch_pods(self, resource_version: str, timeout_s: int) -> Iterator[Json]:
        self.calls.append(("watch", resource_version))
        if not self.watches:
            assert self.watch is not None
            self.watch.stop()
            return iter([])
        answer = self.watches.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return iter(answer)


def run(api: FakeApi) -> tuple[PodWatch, list[tuple[str, str | None]]]:
    """Run the watch to the end of the script; what the sink got as (name, version)."""
    seen: list[tuple[str, str | None]] = []

    def sink(name: str, found: Json | None) -> None:
        seen.append((name, None if found is None else found["metadata"]["resourceVersion"]))

    watch = PodWatch(api, sink, timeout_s=60, backoff_s=(0.0, 0.0))
    api.watch = watch
    watch.run()
    return watch, seen


def test_a_watch_resumes_from_the_last_version_and_relists_on_gone() -> None:
    api = FakeApi(
        lists=[
            ([pod("running", 100), pod("container-creating", 101, "rp-b-0-0")], "105"),
            # After the 410: rp-b is gone (deleted in the gap), rp-a moved on, rp-c is new.
            ([pod("failed-exit-3", 130), pod("running", 131, "rp-c-0-0")], "140"),
            ([pod("failed-exit-3", 130), pod("running", 131, "rp-c-0-0")], "140"),
        ],
        watches=[
            # The server ends the watch (timeoutSeconds): resume from the last version.
            [event("MODIFIED", pod("terminating", 110)), bookmark(115)],
            # The connection breaks: resume from the same version.
            WatchError("connection reset by peer"),
            [GONE_EVENT],
            # 410 can also be the answer to the watch request itself.
            Gone("Expired: too old resource version"),
            [
                event("ADDED", pod("integration-running", 141, "rp-d-0-0")),
                event("DELETED", pod("succeeded-exit-0", 142, "rp-d-0-0")),
            ],
        ],
    )
    watch, seen = run(api)
    assert api.calls == [
        ("list", None),
        ("watch", "105"),
        ("watch", "115"),  # after the bookmark
        ("watch", "115"),  # after the broken connection
        ("list", None),  # 410 as an event
        ("watch", "140"),
        ("list", None),  # 410 as the answer
        ("watch", "140"),
        ("watch", "142"),
    ]
    assert seen == [
        ("rp-a-0-0", "100"),
        ("rp-b-0-0", "101"),
        ("rp-a-0-0", "110"),
        ("rp-a-0-0", "130"),
        ("rp-c-0-0", "131"),
        ("rp-b-0-0", None),  # deleted while nobody watched: the list tells
        ("rp-d-0-0", "141"),
        ("rp-d-0-0", None),
    ]
    assert watch.synced.is_set()
    assert watch.lists == 3
    assert set(watch.pods) == {"rp-a-0-0", "rp-c-0-0"}


def test_a_relist_tells_nothing_the_sink_knows_already() -> None:
    same = pod("running", 100)
    api = FakeApi(lists=[([same], "100"), ([same], "120")], watches=[[GONE_EVENT]])
    _, seen = run(api)
    assert seen == [("rp-a-0-0", "100")]


def test_an_error_other_than_gone_is_retried_from_the_same_version() -> None:
    refused = {"type": "ERROR", "object": {"kind": "Status", "code": 500,
               "reason": "InternalError", "message": "etcdserver: leader changed"}}  # fmt: skip
    api = FakeApi(lists=[([], "7")], watches=[[refused], [event("ADDED", pod("running", 9))]])
    watch, seen = run(api)
    assert api.calls == [("list", None), ("watch", "7"), ("watch", "7"), ("watch", "9")]
    assert seen == [("rp-a-0-0", "9")]
    assert watch.lists == 1
