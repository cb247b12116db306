"""RunConfig: what a user types (YAML or Python), validated into the ``RunSpec`` on the log.

It lives beside the spec because both sides validate with it: the CLI before it sends, the API
server (the authority) before it appends.

``RunConfig`` is a plain dataclass like mcli's: any field may be missing until the run is
submitted, so a config read from a file can be changed before ``create_run``. ``to_spec``
validates with pydantic and raises ``ConfigError`` with one line per problem, each naming
the file and the field. Invariants: nothing invalid reaches the log; an unknown key, at the top
or nested, is an error naming the closest known key (a typo must not drop a setting
silently); a name that is not RFC 1123 is fixed and the fix is a warning, as mcli does.
Every key, its type and its unit is described once, on the models below; ``key_table`` lists
them for ``mcli run --help`` and ``docs/run-yaml.md``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.fields import FieldInfo

from events.spec import INTEGRATION_KEYS, Compute, Priority, RunSpec, Scheduling

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
    import yaml  # noqa: PLC0415 - the API server validates mappings, never loads YAML

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
    """The config of a mapping of run fields (and its warnings: none yet); ``ConfigError``
    naming every unknown key."""
    unknown = [key for key in data if key not in KNOWN_KEYS]
    if unknown:
        lines = [f"{where}: {key}: {unknown_key(str(key), KNOWN_KEYS)}" for key in unknown]
        raise ConfigError("\n".join(lines))
    return RunConfig(**data), []


def unknown_key(key: str, known: Sequence[str]) -> str:
    """What to say of an unknown key: the closest known one, else them all."""
    close = difflib.get_close_matches(key, known, n=1)
    if close:
        return f"unknown key (did you mean {close[0]!r}?)"
    return f"unknown key (known keys: {', '.join(known)})"


class _ComputeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cluster: str | None = Field(default=None, description="the cluster to run on (required)")
    gpus: int = Field(default=0, ge=0, description="GPUs over every node; 0: a CPU-only run")
    gpu_type: str | None = Field(
        default=None, description="the GPU type, as `mcli util` shows it; any type if omitted"
    )
    nodes: int | None = Field(
        default=None,
        ge=1,
        description="nodes, each with gpus / nodes GPUs; if omitted, as many whole nodes as needed",
    )
    cpus: int | None = Field(default=None, ge=0, description="CPUs (recorded, not scheduled)")
    instance: str | None = Field(
        default=None,
        description="the instance type, as `mcli util` names it (a100_80gbx8: its GPU type and "
        "GPUs per node); unknown ones are refused",
    )
    node_names: list[str] | None = Field(
        default=None, description="node names (recorded, not scheduled)"
    )


class _SchedulingIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    priority: Priority = Field(default="auto", description="the queue's order, highest first")
    preemptible: bool = Field(
        default=False, description="a run of higher priority may stop it (it is retried)"
    )
    max_retries: int = Field(
        default=0, ge=0, description="times a resumption that failed (user failure) is retried"
    )
    retry_on_system_failure: bool = Field(
        default=False, description="retry after a system failure (node lost or drained)"
    )
    max_duration: float | None = Field(
        default=None, gt=0, description="hours a resumption may run before it is stopped"
    )


class _RunIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(
        min_length=1,
        description="the run's base name (RFC 1123, at most 56 characters); a random suffix is "
        "added",
    )
    image: str = Field(min_length=1, description="the container image")
    command: str = Field(min_length=1, description="the shell command every rank runs")
    compute: _ComputeIn = Field(description="what the run needs: the keys compute.*")
    scheduling: _SchedulingIn = Field(
        default_factory=_SchedulingIn, description="how it is scheduled: the keys scheduling.*"
    )
    integrations: list[dict[str, Any]] = Field(
        default_factory=list,
        description="steps before the command, in order: the keys integrations[].*",
    )
    env_variables: dict[str, str] = Field(
        default_factory=dict,
        description="environment variables of every rank (or a list of {key, value})",
    )
    parameters: dict[str, Any] = Field(
        default_factory=dict,
        description="free-form; every rank reads them from the file in $PARAMETERS",
    )
    metadata: dict[str, Any] = Field(
        default_factory=dict,
        description="free-form, at most the API's RUNPLANE_API_MAX_METADATA_BYTES as JSON; "
        "`mcli describe run` shows it, `mcli get runs -m KEY` a key's column",
    )

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


def key_table() -> list[tuple[str, str, str]]:
    """Every key of a run YAML: (key, type, meaning with its unit and default)."""
    rows: list[tuple[str, str, str]] = []
    nested: dict[str, type[BaseModel]] = {"compute": _ComputeIn, "scheduling": _SchedulingIn}
    for name, info in _RunIn.model_fields.items():
        rows.append((name, _type_name(info.annotation), _meaning(info)))
        inner = nested.get(name)
        for key, field_info in (inner.model_fields if inner else {}).items():
            rows.append((f"{name}.{key}", _type_name(field_info.annotation), _meaning(field_info)))
        if name == "integrations":
            kinds = ", ".join(INTEGRATION_KEYS)
            rows.append(("integrations[].integration_type", "string", f"one of {kinds}; required"))
            for kind, keys in INTEGRATION_KEYS.items():
                for key, (type_name, meaning) in keys.items():
                    rows.append((f"integrations[{kind}].{key}", type_name, meaning))
    return rows


def scheduling_help() -> dict[str, str]:
    """Each scheduling key's meaning, with its unit: the help of the CLI's options."""
    return {key: str(info.description) for key, info in _SchedulingIn.model_fields.items()}


_TYPE_NAMES: dict[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}


def _type_name(annotation: Any) -> str:
    args = [arg for arg in get_args(annotation) if arg is not type(None)]
    origin = get_origin(annotation)
    if origin is Literal:
        return " | ".join(args)
    if origin is list:
        return f"list of {_type_name(args[0])}s"
    if origin is dict or (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
        return "mapping"
    if origin is not None:  # X | None
        return _type_name(args[0])
    return _TYPE_NAMES.get(annotation, "any")


def _meaning(info: FieldInfo) -> str:
    meaning = str(info.description)
    if info.is_required():
        return f"{meaning}; required"
    default = info.get_default(call_default_factory=True)
    if default in (None, [], {}) or isinstance(default, BaseModel):
        return meaning
    return f"{meaning}; default {str(default).lower() if isinstance(default, bool) else default}"


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
    if problems := list(_integration_keys(where, run.integrations)):
        raise ConfigError("\n".join(problems))
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
        message = unknown_key(key, list(options.model_fields) if options else [])
    return f"{where}: {location}: {message}"


def _integration_keys(where: str, integrations: list[dict[str, Any]]) -> Iterator[str]:
    """A line for each key an integration of a known type does not take."""
    for n, item in enumerate(integrations):
        keys = INTEGRATION_KEYS.get(str(item["integration_type"]))
        if keys is None:
            continue
        known = ["integration_type", *keys]
        for key in item:
            if key not in known:
                yield f"{where}: integrations.{n}.{key}: {unknown_key(str(key), known)}"
