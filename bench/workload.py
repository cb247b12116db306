"""Realistic events for the benchmarks: what the log of a busy cluster holds.

The replay log is a sequence of whole run lifecycles (submit, queue, schedule on four nodes,
pull, run, exit, complete): 22 events per run, JSON bodies of ~190 to ~590 bytes (~290 on
average). Appends are single ``RankExited`` events, the most frequent write; ``bench.cluster``
appends new runs' ``RunSubmitted`` (one new aggregate each, spread over the partitions).
"""

from __future__ import annotations

import uuid

from events.model import (
    AttemptCompleted,
    AttemptQueued,
    AttemptRunning,
    AttemptScheduled,
    AttemptTerminating,
    Event,
    ImagePullFinished,
    ImagePullStarted,
    RankExited,
    RankPlacement,
    RankRunning,
    Reason,
    RunEvent,
    RunSubmitted,
)
from events.spec import Compute, RunSpec, Scheduling

RANKS = 4
EVENTS_PER_RUN = 3 + 4 * RANKS + 3  # 3 to schedule, 4 per rank, 3 to complete
IMAGE = "mosaicml/pytorch:2.5.1_cu124-python3.11-ubuntu22.04"
SCHEDULER = "scheduler@control-0"

Fields = dict[bytes, bytes]


def new_id() -> str:
    return uuid.uuid4().hex


def _node(run_index: int, rank: int) -> str:
    return f"gpu-node-{(run_index * RANKS + rank) % 512:03d}"


def run_submitted(run_index: int) -> RunSubmitted:
    """A new run's submission, as the API appends it: the first event of its history."""
    run_id = new_id()
    spec = RunSpec(
        name=f"llama-8b-pretrain-{run_index % 50}",
        image=IMAGE,
        command="composer train.py /mnt/config/llama3-8b.yaml",
        compute=Compute(cluster="r1z1", gpus=8 * RANKS, gpu_type="h100_80gb", nodes=RANKS),
        scheduling=Scheduling(priority="auto", preemptible=True, max_retries=3),
        env_variables={"WANDB_PROJECT": "pretrain", "NCCL_DEBUG": "WARN"},
        parameters={"max_duration": "10000ba", "global_train_batch_size": 1024},
    )
    return RunSubmitted(
        id=new_id(),
        actor=f"user{run_index % 97}@example.com",
        run_id=run_id,
        name=f"{spec.name}-{run_id[:6]}",
        spec=spec,
    )


def run_lifecycle(run_index: int) -> list[RunEvent]:
    """The 22 events of one successful four-node run, as the services write them."""
    first = run_submitted(run_index)
    run_id, submitted = first.run_id, first.id
    nodes = [_node(run_index, rank) for rank in range(RANKS)]

    def ids() -> tuple[str, str]:
        return new_id(), submitted

    events: list[RunEvent] = [first]
    eid, cid = ids()
    events.append(
        AttemptQueued(
            id=eid,
            actor=SCHEDULER,
            run_id=run_id,
            correlation_id=cid,
            reason="Insufficient resources",
            position=3,
        )
    )
    eid, cid = ids()
    events.append(
        AttemptScheduled(
            id=eid,
            actor=SCHEDULER,
            run_id=run_id,
            correlation_id=cid,
            cluster="r1z1",
            gpu_type="h100_80gb",
            ranks=[
                RankPlacement(rank=rank, node=node, gpus=list(range(8)))
                for rank, node in enumerate(nodes)
            ],
        )
    )
    for step in (ImagePullStarted, ImagePullFinished):
        for rank, node in enumerate(nodes):
            eid, cid = ids()
            events.append(
                step(
                    id=eid,
                    actor=f"agent@{node}",
                    run_id=run_id,
                    correlation_id=cid,
                    rank=rank,
                    node=node,
                    image=IMAGE,
                )
            )
    for rank, node in enumerate(nodes):
        eid, cid = ids()
        events.append(
            RankRunning(
                id=eid,
                actor=f"agent@{node}",
                run_id=run_id,
                correlation_id=cid,
                rank=rank,
                node=node,
                pid=4000 + rank,
            )
        )
    eid, cid = ids()
    events.append(AttemptRunning(id=eid, actor=SCHEDULER, run_id=run_id, correlation_id=cid))
    events.extend(rank_exited(run_id, rank, node) for rank, node in enumerate(nodes))
    eid, cid = ids()
    events.append(AttemptTerminating(id=eid, actor=SCHEDULER, run_id=run_id, correlation_id=cid))
    eid, cid = ids()
    events.append(AttemptCompleted(id=eid, actor=SCHEDULER, run_id=run_id, correlation_id=cid))
    return events


def rank_exited(run_id: str, rank: int = 0, node: str = "gpu-node-000") -> RankExited:
    """A rank's exit, the event agents append most often (one per rank and attempt)."""
    return RankExited(
        id=new_id(),
        actor=f"agent@{node}",
        run_id=run_id,
        attempt=1,
        rank=rank,
        node=node,
        exit_code=137,
        signal=9,
        reason=Reason(
            category="system",
            code="OOMKilled",
            message="rank 3 exceeded its memory limit",
            exit_code=137,
            failed_rank=rank,
        ),
    )


def appends(count: int, runs: int) -> list[Event]:
    """``count`` single-event appends spread over ``runs`` runs."""
    run_ids = [new_id() for _ in range(runs)]
    return [rank_exited(run_ids[i % runs], rank=i % 8) for i in range(count)]
