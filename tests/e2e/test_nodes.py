"""Cordon, drain and uncordon through ``mcli admin nodes`` on a real local stack (issue 18):
a cordoned node takes no new run, a drain's deadline stops what runs there with its reason and
the retry goes to the other node, uncordon places again, a non-admin is refused (403) and the
refusal is audited, and ``mcli audit`` shows every node event.

One stack (2 nodes x 8 GPUs) serves the module.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from events.status import RunStatus
from tests.e2e.mcli_helpers import Mcli, no_traceback, running_stack, user_key, wait_for
from tests.waiting import eventually

S = RunStatus
pytestmark = pytest.mark.e2e
WHOLE_NODE = """\
name: {name}
image: mosaicml/pytorch:latest
command: |
  for i in $(seq 1 3600); do echo "step $i"; sleep 1; done
compute:
  cluster: local
  gpus: 8
scheduling:
  retry_on_system_failure: true
"""


@pytest.fixture(scope="module")
def mcli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mcli]:
    with running_stack(tmp_path_factory.mktemp("nodes") / "stack") as runner:
        yield runner


def _submit(mcli: Mcli, tmp_path: Path, name: str) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(WHOLE_NODE.format(name=name))
    out = mcli.ok("run", "-f", str(path))
    match = re.search(r"✔ Run (\S+) submitted\.", out)
    assert match, out
    return match[1]


def _listed(mcli: Mcli) -> dict[str, str]:
    """Node -> its STATE column in ``mcli admin nodes list``."""
    rows = [line.split() for line in mcli.ok("admin", "nodes", "list").splitlines()[1:]]
    return {row[0]: row[3] for row in rows if row and row[0].startswith("node-")}


async def test_cordon_drain_uncordon_through_mcli(mcli: Mcli, tmp_path: Path) -> None:
    a, b = sorted(_listed(mcli))
    stack = mcli.stack

    carol = Mcli(
        env={**mcli.env, "MOSAICML_API_KEY": await user_key(stack, "carol@example.com")},
        stack=stack,
    )
    refused = carol("admin", "nodes", "cordon", a, "--reason", "mine now")
    no_traceback(refused)
    assert refused.returncode == 1
    assert refused.stderr.startswith("✗ Error 403: "), refused.stderr

    ghost = mcli("admin", "nodes", "cordon", "node-9", "--reason", "x")
    no_traceback(ghost)
    assert ghost.stderr.startswith("✗ Error 404: node node-9: no such node"), ghost.stderr

    # Cordoned: the new run goes to the other node; util shows the cordoned GPUs apart.
    assert "Cordoned node" in mcli.ok("admin", "nodes", "cordon", a, "--reason", "bad fan")
    assert _listed(mcli)[a] == "cordoned"
    first = _submit(mcli, tmp_path, "drained")
    run = await wait_for(stack, first, S.RUNNING, within=60)
    assert [node.name for node in run.nodes] == [b]
    util = mcli.ok("util")
    assert "GPUS_CORDONED" in util

    # A run that only the cordoned node could take says so.
    second = _submit(mcli, tmp_path, "waits")
    await wait_for(stack, second, S.QUEUED)
    [row] = [line for line in mcli.ok("get", "runs").splitlines() if line.startswith(second)]
    assert "8x a100_80gb" in row, row  # the cluster's GPU type, not `8x gpu` (item 6)
    await eventually(
        lambda: "Waiting for cordoned nodes" in mcli.ok("util"),
        what="the queued run's reason to name the cordoned node",
    )
    mcli.ok("stop", "run", second, "-y")
    await wait_for(stack, second, S.STOPPED)

    # Uncordon a, drain b with a short deadline: the attempt is stopped at the deadline with
    # the drain's reason and retried (a system failure) on a.
    assert "Uncordoned node" in mcli.ok("admin", "nodes", "uncordon", a)
    drained = mcli.ok(
        "admin", "nodes", "drain", b, "--reason", "kernel upgrade", "--deadline", "3s"
    )
    assert "Draining node" in drained
    assert _listed(mcli)[b] == "draining"
    retried = await wait_for(stack, first, S.RUNNING, resumption=1, within=90)
    assert [node.name for node in retried.nodes] == [a]
    await eventually(lambda: _listed(mcli)[b] == "drained", what=f"{b} to be drained (empty)")
    assert retried.resumptions[0].reason_code == "NodeDrained"
    history = mcli.ok("events", first)
    assert "kernel upgrade" in history, history

    # Uncordon b: placements there again (a is full).
    mcli.ok("admin", "nodes", "uncordon", b)
    third = _submit(mcli, tmp_path, "after")
    placed = await wait_for(stack, third, S.RUNNING, S.STARTING, within=60)
    assert [node.name for node in placed.nodes] == [b]

    entries = json.loads(mcli.ok("audit", "-o", "json"))
    actions = [(e["action"], e.get("node"), e["actor"]) for e in entries]
    for action, node in (
        ("node.cordoned", a),
        ("node.uncordoned", a),
        ("node.drain_requested", b),
        ("node.uncordoned", b),
    ):
        assert any(x[0] == action and x[1] == node for x in actions), (action, node, actions)
    refusals = [e for e in entries if e["action"] == "request.refused"]
    assert any(e["actor"] == "carol@example.com" and "cordon" in e["detail"] for e in refusals)

    for name in (first, third):
        mcli.ok("stop", "run", name, "-y")
