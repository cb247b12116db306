"""Submitting runs: a config with the command line's overrides, validated, then sent.

A config is fully validated here (``events.config.to_spec``), so a bad file is reported before
anything is sent; the API server validates it again and checks it against the cluster
(``services.api.runs``), and nothing is written unless both pass.
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

from cli.client import Client
from cli.models import Run, build_run
from events.config import RunConfig, to_spec
from events.spec import RunSpec


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


async def submit_config(
    client: Client, config: RunConfig, *, where: str = "config"
) -> tuple[Run, RunSpec, list[str]]:
    """Validate, check and submit ``config``; the run as submitted, its spec and the warnings."""
    spec, warnings = to_spec(config, where=where)
    return build_run(*await client.submit(spec)), spec, warnings
