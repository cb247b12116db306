"""Submitting runs: validate, check against the cluster, then write (or write nothing).

Invariants: a config is fully validated (``cli.config.to_spec``) and checked against what
the cluster's registered nodes could ever hold before anything is written; a request that can
never fit is refused here with the reason, not left to fail in the queue. Until the
scheduler's fit rules (``shapes``) live in ``events/``, only two checks are made: the cluster
is known (it has registered nodes) and no rank asks for more GPUs than a node of the requested
gpu_type has.
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

from cli.client import Client, ClientError
from cli.config import RunConfig, to_spec
from cli.reads import unknown_cluster
from events.spec import Compute, RunSpec
from projections import query


class Unfit(ClientError):
    """The request can never run on its cluster."""


def with_overrides(config: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """``config`` with command-line overrides: top-level fields, ``compute.*``, and
    ``scheduling.*`` (keys given as ``section.key``; None means not given)."""
    top: dict[str, Any] = {}
    compute = dict(config.compute)
    scheduling = dict(config.scheduling)
    for key, value in overrides.items():
        if value is None:
            continue
        section, _, name = key.rpartition(".")
        if section == "compute":
            compute[name] = value
        elif section == "scheduling":
            scheduling[name] = value
        else:
            top[name] = value
    current = {f.name: getattr(config, f.name) for f in fields(RunConfig)}
    return replace(RunConfig(**current), compute=compute, scheduling=scheduling, **top)


async def check_fits(client: Client, compute: Compute) -> None:
    """``Unfit`` if the cluster is unknown or a rank is larger than any of its nodes."""
    known = [c for c in await query.utilization(client.redis) if c.instances]
    cluster = next((c for c in known if c.cluster == compute.cluster), None)
    if cluster is None:
        raise Unfit(unknown_cluster(compute.cluster, [c.cluster for c in known]))
    instances = [i for i in cluster.instances if i.nodes > 0] or cluster.instances
    if compute.gpu_type is not None:
        instances = [i for i in instances if i.gpu_type == compute.gpu_type]
        if not instances:
            types = sorted({i.gpu_type or "none" for i in cluster.instances})
            raise Unfit(
                f"cluster {compute.cluster} has no {compute.gpu_type} GPUs "
                f"(it has: {', '.join(types)}): change compute.gpu_type"
            )
    largest = max(i.gpus_per_node for i in instances)
    nodes = compute.nodes
    if nodes:
        per_rank = compute.gpus // nodes
        if per_rank > largest:
            raise Unfit(
                f"each of the {nodes} nodes would need {per_rank} GPUs, but the largest node of "
                f"cluster {compute.cluster} has {largest}: ask for more nodes or fewer GPUs"
            )
    elif compute.gpus > largest and (largest == 0 or compute.gpus % largest):
        raise Unfit(
            f"{compute.gpus} GPUs do not fit on one node of cluster {compute.cluster} "
            f"(at most {largest}) nor split into whole nodes: ask for a multiple of {largest}"
        )


async def submit_config(
    client: Client, config: RunConfig, *, where: str = "config"
) -> tuple[str, RunSpec, list[str]]:
    """Validate, check and submit ``config``; its unique run name, spec and the warnings."""
    spec, warnings = to_spec(config, where=where)
    await check_fits(client, spec.compute)
    _, name = await client.submit(spec)
    return name, spec, warnings
