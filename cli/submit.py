"""Submitting runs: validate, check against the cluster, then write (or write nothing).

Invariants: a config is fully validated (``events.config.to_spec``) and checked against what
the cluster's registered nodes could ever hold before anything is written, by the fit rules
the scheduler places with (``events.fit``): a request that can never fit is refused here with
the scheduler's reason, not left to fail in the queue.
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

from cli.client import Client, ClientError
from cli.reads import unknown_cluster
from events.config import RunConfig, to_spec
from events.fit import InstanceType, Refusal, shapes
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
    """``Unfit`` if the cluster is unknown or no registered node set of it could ever hold
    the request (``events.fit.shapes``: the scheduler's own rule)."""
    known = [c for c in await query.utilization(client.redis) if c.instances]
    cluster = next((c for c in known if c.cluster == compute.cluster), None)
    if cluster is None:
        raise Unfit(unknown_cluster(compute.cluster, [c.cluster for c in known]))
    registered = {
        InstanceType(i.gpu_type, i.gpus_per_node): i.registered for i in cluster.instances
    }
    verdict = shapes(compute, registered)
    if isinstance(verdict, Refusal) and verdict.permanent:
        raise Unfit(f"{verdict.message}: change the request's compute")


async def submit_config(
    client: Client, config: RunConfig, *, where: str = "config"
) -> tuple[str, RunSpec, list[str]]:
    """Validate, check and submit ``config``; its unique run name, spec and the warnings."""
    spec, warnings = to_spec(config, where=where)
    await check_fits(client, spec.compute)
    _, name = await client.submit(spec)
    return name, spec, warnings
