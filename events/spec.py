"""The run configuration as machines exchange it: the validated form of a run YAML.

People type YAML, which pydantic validates at the edge (cli/); what lands on the log is this
msgspec form. Every field has the default mcli gives it, so an event written before a field
existed still decodes.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import msgspec

Priority = Literal["auto", "low", "lowest"]

#: mcli's priority names, highest first: the one set that the CLI, the YAML and the SDK accept
#: and that every view shows.
PRIORITIES: tuple[Priority, ...] = get_args(Priority)

#: Higher runs first.
PRIORITY_RANK: dict[str, int] = {name: len(PRIORITIES) - 1 - n for n, name in enumerate(PRIORITIES)}


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


#: The keys each integration type takes besides ``integration_type``: (type, meaning). The
#: node-agent carries out these types (``services.node_agent.integrations``); a submit refuses
#: any other key of them.
INTEGRATION_KEYS: dict[str, dict[str, tuple[str, str]]] = {
    "git_repo": {
        "git_repo": ("string", "the repository: org/repo (on host), a URL or a path"),
        "git_branch": ("string", "the branch to clone"),
        "git_commit": ("string", "the commit to check out after the clone"),
        "path": ("string", "where to clone, relative to the workspace (default: the repo's name)"),
        "pip_install": ("string", "arguments of a `pip install` in the clone, e.g. `-e .`"),
        "ssh_clone": ("boolean", "clone org/repo over SSH (git@host:org/repo.git)"),
        "host": ("string", "the host of an org/repo (default github.com)"),
    },
    "pip_packages": {
        "packages": ("list of strings", "the packages to pip install"),
        "upgrade": ("boolean", "pip install --upgrade"),
    },
    "apt_packages": {"packages": ("list of strings", "the packages to apt-get install (as root)")},
}


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
