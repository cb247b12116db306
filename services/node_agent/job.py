"""A rank to run on this node, as the log describes it.

``RankKey`` names one rank of one attempt of one run; ``RankJob`` adds what running it needs,
read from the run's folded state. Pure data.
"""

from __future__ import annotations

from typing import NamedTuple

import msgspec

from events.lifecycle import AttemptState, RunState
from events.model import RankPlacement
from events.spec import RunSpec


class RankKey(NamedTuple):
    run_id: str
    attempt: int
    rank: int

    def __str__(self) -> str:
        return f"{self.run_id}/{self.attempt}/{self.rank}"


class RankJob(msgspec.Struct, kw_only=True, frozen=True):
    run_id: str
    run_name: str
    attempt: int
    rank: int
    node: str
    spec: RunSpec
    #: Every rank of the attempt, in rank order (NODE_RANK, WORLD_SIZE, MASTER_ADDR need them).
    placement: list[RankPlacement]
    #: Who submitted the run: whose secrets its ranks get (``services.node_agent.secrets``).
    owner: str = ""

    @property
    def key(self) -> RankKey:
        return RankKey(self.run_id, self.attempt, self.rank)

    @property
    def gpus(self) -> list[int]:
        return self.placement[self.rank].gpus


def job_of(state: RunState, attempt: AttemptState, rank: int) -> RankJob:
    placement = [RankPlacement(rank=r.rank, node=r.node, gpus=list(r.gpus)) for r in attempt.ranks]
    return RankJob(
        run_id=state.run_id,
        run_name=state.name,
        attempt=attempt.index,
        rank=rank,
        node=placement[rank].node,
        spec=state.spec,
        placement=placement,
        owner=state.created_by,
    )


# How a rank's command ended, whatever ran it (the process executor's exit.json, a Pod's status).
class ExitStatus(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    exit_code: int | None = None  # None when the command was killed by a signal or never ran
    signal: int | None = None
    stopped: bool = False  # the shim signalled the command because it was told to stop
    fenced: bool = False  # the shim stopped it because the node's lease expired (docs/fencing.md)
    error: str | None = None  # the command could not be started
    lines: int = 0
    dropped: int = 0
