"""RunConfig: what a user types (YAML or Python), validated into the ``RunSpec`` on the log.

``RunConfig`` is a plain dataclass like mcli's: any field may be missing until the run is
submitted, so a config read from a file can be changed before ``create_run``. ``to_spec``
validates with pydantic and raises ``ConfigError`` with one line per problem, each naming
the file and the field. Invariants: nothing invalid reaches the log; an unknown key is a
warning (with the closest known key), not an error; a name that is not RFC 1123 is fixed
and the fix is a warning, as mcli does.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from events.spec import Compute, RunSpec, Scheduling

MAX_NAME = 56
_RFC1123_BAD = re.compile(r"[^a-z0-9-]+")


class ConfigError(ValueError):
    """A run configuration that cannot be submitted; ``str()`` is what the user should read."""


@dataclass
class RunConfig:
    name: str | None = None
    image: str | None = None
    command: str | None = None
    compute: dict[str, Any] = field(default_factory=dict)
    scheduling: dict[str, Any] = field(default_factory=dict)
    integrations: list[dict[str, Any]] = field(default_factory=list)
    env_variables: dict[str, str] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_file(cls, path: str | Path) -> RunConfig:
        config, _ = load_file(path)
        return config

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        config, _ = from_mapping(data, where="config")
        return config


KNOWN_KEYS = tuple(f.name for f in fields(RunConfig))


def load_file(path: str | Path) -> tuple[RunConfig, list[str]]:
    """The config in a YAML file and the warnings about it; ``ConfigError`` if unreadable."""
    source = Path(path)
    try:
        text = source.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{source}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read it ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else str(source)
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise ConfigError(f"{where}: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of run fields, got {type(data).__name__}")
    return from_mapping(data, where=str(source))


def from_mapping(data: dict[str, Any], *, where: str) -> tuple[RunConfig, list[str]]:
    warnings = []
    known: dict[str, Any] = {}
    for key, value in data.items():
        if key in KNOWN_KEYS:
            known[key] = value
            continue
        close = difflib.get_close_matches(str(key), KNOWN_KEYS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        warnings.append(f"{where}: unknown key '{key}' is ignored{hint}")
    return RunConfig(**known), warnings


class _ComputeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cluster: str | None = None
    gpus: int = Field(default=0, ge=0)
    gpu_type: str | None = None
    nodes: int | None = Field(default=None, ge=1)
    cpus: int | None = Field(default=None, ge=0)
    instance: str | None = None
    node_names: list[str] | None = None


class _SchedulingIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    priority: Literal["auto", "low", "lowest"] = "auto"
    preemptible: bool = False
    max_retries: int = Field(default=0, ge=0)
    retry_on_system_failure: bool = False
    max_duration: float | None = Field(default=None, gt=0)


class _RunIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    image: str = Field(min_length=1)
    command: str = Field(min_length=1)
    compute: _ComputeIn
    scheduling: _SchedulingIn = Field(default_factory=_SchedulingIn)
    integrations: list[dict[str, Any]] = Field(default_factory=list)
    env_variables: dict[str, str] = Field(default_factory=dict)
    parameters: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("integrations")
    @classmethod
    def _typed(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for n, item in enumerate(value):
            if "integration_type" not in item:
                raise ValueError(f"item {n} has no integration_type")
        return value

    @field_validator("env_variables", mode="before")
    @classmethod
    def _env_as_strings(cls, value: Any) -> Any:
        if isinstance(value, list):  # mcli also accepts [{key: K, value: V}, ...]
            return {item["key"]: str(item["value"]) for item in value}
        if isinstance(value, dict):
            return {key: str(item) for key, item in value.items()}
        return value


def to_spec(
    config: RunConfig, *, where: str = "config", default_cluster: str | None = None
) -> tuple[RunSpec, list[str]]:
    """Validate ``config`` into a ``RunSpec``; also returns warnings (a fixed name)."""
    raw = {f.name: getattr(config, f.name) for f in fields(RunConfig)}
    missing = [key for key in ("name", "image", "command") if not raw[key]]
    if missing:
        raise ConfigError(
            f"{where}: missing {', '.join(missing)}: every run needs a name, an image and a command"
        )
    try:
        run = _RunIn.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError("\n".join(_describe(where, error) for error in exc.errors())) from None
    compute = run.compute.model_dump()
    compute["cluster"] = compute["cluster"] or default_cluster
    if not compute["cluster"]:
        raise ConfigError(f"{where}: compute.cluster is missing: name the cluster to run on")
    nodes = compute["nodes"]
    if nodes and compute["gpus"] % nodes:
        raise ConfigError(
            f"{where}: compute.gpus ({compute['gpus']}) does not divide evenly over "
            f"compute.nodes ({nodes}): ask for a multiple of {nodes} GPUs"
        )
    name, warnings = fix_name(run.name, where)
    spec = RunSpec(
        name=name,
        image=run.image,
        command=run.command,
        compute=Compute(**compute),
        scheduling=Scheduling(**run.scheduling.model_dump()),
        integrations=run.integrations,
        env_variables=run.env_variables,
        parameters=run.parameters,
        metadata=run.metadata,
    )
    return spec, warnings


def fix_name(name: str, where: str = "config") -> tuple[str, list[str]]:
    """An RFC 1123 name (lower-case letters, digits, '-'), at most 56 characters."""
    fixed = _RFC1123_BAD.sub("-", name.lower()).strip("-")[:MAX_NAME].strip("-")
    if not fixed:
        raise ConfigError(f"{where}: name '{name}' has no letters or digits to make a run name of")
    if fixed == name:
        return name, []
    return fixed, [f"{where}: run name '{name}' is not RFC 1123; using '{fixed}'"]


def _describe(where: str, error: Any) -> str:
    location = ".".join(str(part) for part in error["loc"])
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        section, _, key = location.rpartition(".")
        sections: dict[str, type[BaseModel]] = {"compute": _ComputeIn, "scheduling": _SchedulingIn}
        options = sections.get(section)
        close = difflib.get_close_matches(key, list(options.model_fields) if options else [], n=1)
        message = f"unknown key{f' (did you mean {close[0]!r}?)' if close else ''}"
    return f"{where}: {location}: {message}"
