"""The run configuration as machines exchange it: the validated form of a run YAML.

People type YAML, which pydantic validates at the edge (cli/); what lands on the log is this
msgspec form. Every field has the default mcli gives it, so an event written before a field
existed still decodes.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

Priority = Literal["auto", "low", "lowest"]

#: Higher runs first. mcli shows ``auto`` as "medium".
PRIORITY_RANK: dict[str, int] = {"auto": 2, "low": 1, "lowest": 0}


class Compute(msgspec.Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=False):
    cluster: str
    gpus: int = 0
    gpu_type: str | None = None
    nodes: int | None = None
    cpus: int | None = None
    instance: str | None = None
    node_names: list[str] | None = None


class Scheduling(msgspec.Struct, kw_only=True, omit_defaults=True):
    priority: Priority = "auto"
    preemptible: bool = False
    max_retries: int = 0
    retry_on_system_failure: bool = False
    max_duration: float | None = None  # hours


class RunSpec(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What a run asks for. ``name`` is the user's base name, before the random suffix."""

    name: str
    image: str
    command: str
    compute: Compute
    scheduling: Scheduling = msgspec.field(default_factory=Scheduling)
    integrations: list[dict[str, Any]] = msgspec.field(default_factory=list)
    env_variables: dict[str, str] = msgspec.field(default_factory=dict)
    parameters: dict[str, Any] = msgspec.field(default_factory=dict)
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
