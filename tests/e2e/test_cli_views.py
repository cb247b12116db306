"""``mcli`` end to end, as a second user and a script see it (issue 22): whose run it is,
deleted runs, unknown runs, billing with prices, describe's line for a stop.

One stack (2 nodes x 8 GPUs) serves the module; each test leaves no run holding GPUs.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator

import pytest

from events.status import RunStatus
from tests.e2e.mcli_helpers import (
    USER,
    Mcli,
    no_traceback,
    running_stack,
    user_key,
    wait_for,
)
from tests.waiting import eventually

S = RunStatus
pytestmark = pytest.mark.e2e
DONE = (S.COMPLETED, S.FAILED, S.STOPPED)
BOB = "bob@example.com"


@pytest.fixture(scope="module")
def mcli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mcli]:
    with running_stack(tmp_path_factory.mktemp("views") / "stack") as runner:
        yield runner


async def as_user(mcli: Mcli, user: str, *, admin: bool = True) -> Mcli:
    """The CLI as ``user``, with a key of their own (an admin's, unless not ``admin``)."""
    key = await user_key(mcli.stack, user, admin=admin)
    return Mcli(env={**mcli.env, "MOSAICML_API_KEY": key}, stack=mcli.stack)


def one_error(done: subprocess.CompletedProcess[str], code: int, *parts: str) -> str:
    """The command failed with one ``✗ Error <code>: ...`` line holding ``parts``."""
    no_traceback(done)
    assert done.returncode == 1, done
    first = done.stderr.splitlines()[0]
    assert first.startswith(f"✗ Error {code}: "), done.stderr
    for part in parts:
        assert part in first, done.stderr
    return first


def audit_of(mcli: Mcli, name: str) -> list[str]:
    return [entry["action"] for entry in json.loads(mcli.ok("audit", "-r", name, "-o", "json"))]


async def test_another_users_run_takes_all_users_for_every_command(mcli: Mcli) -> None:
    name = mcli.submit("long")
    await wait_for(mcli.stack, name, S.RUNNING)
    bob = await as_user(mcli, BOB)
    before = audit_of(mcli, name)
    for verb, args in [
        ("describe", ["describe", "run", name]),
        ("read the logs of", ["logs", name]),
        ("read the events of", ["events", name]),
        ("read the audit trail of", ["audit", "-r", name]),
        ("update", ["update", "run", name, "--max-retries", "1"]),
        ("stop", ["stop", "run", name, "-y"]),
        ("delete", ["delete", "run", name, "-y"]),
        ("restart", ["run", "-r", name]),
        ("clone", ["run", "--clone", name]),
    ]:
        one_error(
            bob(*args),
            403,
            f"Run {name} belongs to {USER}, not {BOB}",
            f"add --all-users to {verb} another user's run",
        )
    after = audit_of(mcli, name)  # nothing was written but the refusals, for the audit
    assert [action for action in after if action != "request.refused"] == before
    assert after.count("request.refused") == 9
    assert name in bob.ok("describe", "run", name, "--all-users")
    assert f"✔ Stopped run {name}" in bob.ok("stop", "run", name, "-y", "--all-users")
    await wait_for(mcli.stack, name, S.STOPPED)
    described = mcli.ok("describe", "run", name)
    assert re.search(rf"Rank 0 on node-\d ended by signal 15 \(stopped by {BOB}\)", described), (
        described
    )
    assert "exited with no exit" not in described


async def test_two_users_neither_sees_nor_stops_the_others_runs_and_the_key_is_who(
    mcli: Mcli,
) -> None:
    carol = await as_user(mcli, "carol@example.com", admin=False)
    dave = await as_user(mcli, "dave@example.com", admin=False)
    posing = Mcli(env={**carol.env, "RUNPLANE_USER": "dave@example.com"}, stack=mcli.stack)
    name = posing.submit("long")
    await wait_for(mcli.stack, name, S.RUNNING)
    for args in (
        ["describe", "run", name],
        ["logs", name],
        ["stop", "run", name, "-y"],
        ["stop", "run", name, "-y", "--all-users"],
        ["run", "-r", name],
    ):
        one_error(dave(*args), 404, f"Run {name} not found")
    assert name not in dave.ok("get", "runs", "--all-users")
    assert name in mcli.ok("get", "runs", "--all-users")
    assert f"✔ Stopped run {name}" in posing.ok("stop", "run", name, "-y")
    await wait_for(mcli.stack, name, S.STOPPED)
    trail = json.loads(mcli.ok("audit", "-r", name, "-o", "json", "--all-users"))
    asked = {e["action"]: e["actor"] for e in trail if e["action"].startswith("run.")}
    assert asked == {
        "run.submitted": "carol@example.com",
        "run.stop_requested": "carol@example.com",
    }


async def test_a_deleted_run_answers_every_request_the_same_way(mcli: Mcli) -> None:
    name = mcli.submit("hello")
    await wait_for(mcli.stack, name, *DONE)
    assert f"✔ Deleted run {name}" in mcli.ok("delete", "run", name, "-y")
    for args in [
        ["delete", "run", name, "-y"],
        ["stop", "run", name, "-y"],
        ["run", "-r", name],
        ["update", "run", name, "--priority", "low"],
    ]:
        first = one_error(mcli(*args), 409, f"Run {name} is deleted and accepts no more requests")
        assert f"mcli run --clone {name}" in first
    assert name in mcli.ok("describe", "run", name)  # its history stays readable

    def marked() -> bool:  # once the projector has folded the deletion
        shown = mcli.ok("get", "runs", name, "--include-deleted").splitlines()
        return any(line.startswith(f"{name} (deleted) ") for line in shown)

    await eventually(marked, what=f"get runs --include-deleted to mark {name} deleted")
    assert name not in mcli.ok("get", "runs")


@pytest.mark.parametrize(
    "args",
    [  # describe, logs, events, update, stop and delete: test_cli's bad-input cases
        ["audit", "-r", "nope-abcdef"],
        ["run", "-r", "nope-abcdef"],
        ["run", "--clone", "nope-abcdef"],
    ],
)
def test_an_unknown_run_is_a_404_everywhere(mcli: Mcli, args: list[str]) -> None:
    one_error(mcli(*args), 404, "Run nope-abcdef not found")


async def test_billing_prices_what_has_a_price(mcli: Mcli) -> None:
    """A CPU-only run bills 0 GPU-hours of gpu_type ``none``, which has no price: the cost of
    everything else and the TOTAL are still shown."""
    gpu = mcli.submit("hello")
    cpu = mcli.submit("hello", "--gpus", "0", "--name", "cpu-only")
    for name in (gpu, cpu):
        await wait_for(mcli.stack, name, *DONE)
    priced = Mcli(env={**mcli.env, "RUNPLANE_GPU_PRICES": '{"a100_80gb": "2"}'}, stack=mcli.stack)

    def by_run() -> dict[str, dict[str, object]] | None:
        report = json.loads(priced.ok("billing", "--by", "run", "-o", "json"))
        lines = {line["run"]: line for line in report["lines"]}
        return lines if {gpu, cpu} <= set(lines) else None

    lines = await eventually(by_run, what="billing to show both runs")
    assert lines[cpu]["gpu_ms"] == 0
    assert lines[gpu]["cost"] is not None
    total = next(line for line in priced.ok("billing").splitlines() if line.startswith("TOTAL"))
    assert re.fullmatch(r"TOTAL\s+\d+\.\d{3}\s+\d+\.\d{2}", total.rstrip()), total
