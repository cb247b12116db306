"""A Pod container's log, followed: lines read in one go share their stamp, and none of them
is lost; a follow resumed from the ledger skips exactly the lines sent before."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import cast

from services.node_agent.kube.api import KubeApi
from services.node_agent.kube.logs import Follower
from services.node_agent.pump import OutputPump
from tests.waiting import eventually

T1 = "2026-01-01T00:00:01.000000001Z"
T2 = "2026-01-01T00:00:02Z"


class _Api:
    def __init__(self, text: str) -> None:
        self.text = text.encode()
        self.since: list[str | None] = []

    def pod_log(self, pod: str, container: str, since_time: str | None) -> Iterator[bytes]:
        self.since.append(since_time)
        yield self.text


class _Pump:
    def __init__(self) -> None:
        self.lines: list[bytes] = []

    def put(self, source: bytes, line: bytes, cut: int = 0) -> None:
        self.lines.append(line)


async def _follow(api: _Api, sent_until: str | None) -> tuple[list[bytes], list[str]]:
    pump, records = _Pump(), list[str]()
    follower = Follower(
        cast(KubeApi, api), "pod", "rank", cast(OutputPump, pump), asyncio.get_running_loop(),
        sent_until=sent_until, record=records.append, finished=lambda: True,
    )  # fmt: skip
    follower.start()
    assert await asyncio.to_thread(follower.done.wait, 10)
    return pump.lines, records


async def test_lines_sharing_a_stamp_are_all_sent_and_counted() -> None:
    log = f"{T1} one\n{T1} two\n{T2} three\n{T2} four\n"
    lines, records = await _follow(_Api(log), None)
    await eventually(lambda: len(lines) == 4, what="every line")
    assert lines == [b"one", b"two", b"three", b"four"]
    assert records[-1] == f"{T2} 2"


async def test_a_resumed_follow_skips_exactly_what_was_sent() -> None:
    api = _Api(f"{T1} one\n{T1} two\n{T2} three\n{T2} four\n{T2} five\n")
    lines, records = await _follow(api, f"{T2} 2")
    await eventually(lambda: len(lines) == 1, what="the new line")
    assert lines == [b"five"]
    assert api.since == ["2026-01-01T00:00:02Z"]
    assert records[-1] == f"{T2} 3"
