"""``mcli admin archive`` on a local stack: what every view shows of a finished run is what it
showed before; the scheduler, the API and the projector, restarted, read the archive (the
admin's key is an archived event); the run is restarted and its new resumption joins its
history; a rebuild shows it (issue 16). Under ``RUNPLANE_RETAIN``, the log-collector archives
the log by itself, and every view is as before. No ACL denial on the way."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any, cast

import pytest

from events import keys
from events.status import RunStatus
from services.core.client import connect_with
from tests.e2e.mcli_helpers import Mcli, running_stack, wait_for
from tests.waiting import eventually

S = RunStatus
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def mcli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mcli]:
    with running_stack(tmp_path_factory.mktemp("archive") / "stack", nodes=1) as runner:
        runner.env["RUNPLANE_EVENT_ARCHIVE"] = str(runner.stack.state_dir / "event-archive")
        yield runner


async def test_an_archived_run_reads_as_before_and_restarts(mcli: Mcli) -> None:
    name = mcli.submit("hello")
    await wait_for(mcli.stack, name, S.COMPLETED)
    described_before = mcli.ok("describe", "run", name)
    events = json.loads(mcli.ok("events", name, "-o", "json"))
    views_before = views(mcli, name)

    moved = mcli.ok("admin", "archive", "--before", "0.001s")

    match = re.fullmatch(r"archived (\d+) events of (\d+) runs(;.*)?\n", moved)
    assert match, moved
    assert int(match[1]) > 0
    assert "1 runs at rest now read from the archive" in moved
    assert not await history_kept(mcli, events[0]["run_id"])
    assert mcli.ok("describe", "run", name) == described_before
    assert json.loads(mcli.ok("events", name, "-o", "json")) == events
    # The projector moves the run's rows out of Valkey, to Parquet beside the archive.
    await eventually(
        lambda: rows_in_valkey(mcli, events[0]["run_id"]),
        equals=False,
        what="the run's rows to leave Valkey",
        within=60,
    )
    assert views(mcli, name) == views_before

    for service in ("scheduler", "api", "projector"):  # each replays archive + stream
        mcli.stack.kill(service)
        mcli.stack.start(service)

    def described() -> str | None:  # by the admin, whose user and key are archived events
        done = mcli("describe", "run", name)
        return done.stdout if done.returncode == 0 else None

    again = await eventually(described, what="the API to answer again", within=60)
    assert again == described_before
    assert f"✔ Run {name} resubmitted." in mcli.ok("run", "-r", name)
    await wait_for(mcli.stack, name, S.COMPLETED, resumption=1)
    after = json.loads(mcli.ok("events", name, "-o", "json"))
    assert after[: len(events)] == events
    assert [e["version"] for e in after] == list(range(1, len(after) + 1))

    mcli.ok("projections", "rebuild", "--lanes", "1")
    listed = json.loads(mcli.ok("get", "runs", name, "-o", "json"))
    assert [(r["status"], len(r["resumptions"])) for r in listed] == [(S.COMPLETED, 2)]
    assert mcli.ok("admin", "archive", "--before", "0.001s").startswith("archived ")


def views(mcli: Mcli, name: str) -> list[str]:
    """What the projections show of a run: its listing, billing, its audit trail."""
    return [
        mcli.ok("get", "runs", "-o", "json"),
        mcli.ok("billing", "--by", "run", "-o", "json"),
        mcli.ok("billing", "--by", "user", "-o", "json"),
        mcli.ok("audit", "--run", name, "-o", "json"),
    ]


async def rows_in_valkey(mcli: Mcli, run_id: str) -> bool:
    """Whether the server still holds the run's ``run_status`` row."""
    client = connect_with(mcli.stack.operator_settings())
    try:
        active = cast(bytes, await client.get(keys.projection_active("run_status")))
        rows = keys.projection_rows("run_status", active.decode(), "run")
        return bool(await client.hexists(rows, run_id))
    finally:
        await client.aclose()


async def history_kept(mcli: Mcli, run_id: str) -> bool:
    """Whether the server still holds the run's own stream."""
    client = connect_with(mcli.stack.operator_settings())
    try:
        return bool(await client.exists(keys.aggregate_stream(f"run:{run_id}", 0)))
    finally:
        await client.aclose()


@pytest.fixture
def retained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mcli]:
    """A stack whose log-collector keeps 1 s of the log in Valkey, a pass every 0.5 s."""
    retain = {"RUNPLANE_RETAIN": "1s", "RUNPLANE_RETAIN_EVERY_S": "0.5"}
    with running_stack(tmp_path_factory.mktemp("retain") / "stack", 1, retain) as runner:
        yield runner


async def test_under_retain_the_collector_archives_the_log_and_views_stay(retained: Mcli) -> None:
    mcli = retained
    name = mcli.submit("hello")
    await wait_for(mcli.stack, name, S.COMPLETED)
    described = mcli.ok("describe", "run", name)
    events = json.loads(mcli.ok("events", name, "-o", "json"))
    client = connect_with(mcli.stack.operator_settings())
    try:
        await eventually(lambda: client.xlen(keys.log_stream(0)), equals=0, what="the log archived")
    finally:
        await client.aclose()
    assert list((mcli.stack.state_dir / "event-archive").glob("day=*/*.parquet"))
    await eventually(
        lambda: history_kept(mcli, events[0]["run_id"]), equals=False, what="its stream gone"
    )
    assert mcli.ok("describe", "run", name) == described
    assert json.loads(mcli.ok("events", name, "-o", "json")) == events


async def test_under_retain_nothing_of_a_finished_run_stays_in_valkey(retained: Mcli) -> None:
    """The whole of what bounds Valkey under retention: once a run is archived, no key, no
    field, no member names it (its id or its name), and every view reads as before."""
    mcli = retained
    name = mcli.submit("hello")
    await wait_for(mcli.stack, name, S.COMPLETED)
    run_id = json.loads(mcli.ok("events", name, "-o", "json"))[0]["run_id"]
    shown = [
        mcli.ok("describe", "run", name),
        mcli.ok("logs", name),
        mcli.ok("get", "runs", name, "-o", "json"),
        mcli.ok("audit", "--run", name, "-o", "json"),
    ]
    client = connect_with(mcli.stack.operator_settings())
    try:
        await eventually(
            lambda: mentions(client, (run_id, name)),
            equals=[],
            what=f"nothing of {name} left in Valkey",
            within=90,
        )
    finally:
        await client.aclose()
    assert [
        mcli.ok("describe", "run", name),
        mcli.ok("logs", name),
        mcli.ok("get", "runs", name, "-o", "json"),
        mcli.ok("audit", "--run", name, "-o", "json"),
    ] == shown


async def mentions(client: Any, needles: tuple[str, ...]) -> list[str]:
    """Every key of the server that names one of ``needles``: in its name, its value, a field,
    a member or an entry (but output's ingest queue)."""
    found: list[str] = []
    wanted = [needle.encode() for needle in needles]

    def named(*parts: bytes) -> bool:
        return any(needle in part for part in parts for needle in wanted)

    async for key in client.scan_iter(count=1000):
        if key == keys.log_ingest().encode():
            continue  # a queue trimmed to what was read: a macro node of lines at most stays
        kind = (await client.type(key)).decode()
        if named(key):
            found.append(key.decode())
        elif kind == "string":
            value = await client.get(key)
            if value is not None and named(value):
                found.append(key.decode())
        elif kind == "hash" and any(
            [named(f, v) async for f, v in client.hscan_iter(key, count=1000)]
        ):
            found.append(key.decode())
        elif kind in ("set", "zset"):
            members = client.sscan_iter(key) if kind == "set" else client.zscan_iter(key)
            if any([named(m if kind == "set" else m[0]) async for m in members]):
                found.append(key.decode())
        elif kind == "stream" and any(
            named(*flat.keys(), *flat.values())
            for _, flat in await client.xrange(key, count=100_000)
        ):
            found.append(key.decode())
    return found
