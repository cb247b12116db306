"""The mutation resolvers: MAPI's requests on runs (``reference/mapi.md`` sections 5.2 to 5.7).

Each turns its input into a command and leaves the deciding to ``services.api.runs``. A request
names its runs in ``getRunsData.filters.name`` (``in`` and ``equals``); no other filter selects
runs for a request (a request that names a status or a cluster is refused rather than
stretched), and ``getRunsData.entity`` is how a client says it means someone else's runs (the
CLI's ``--all-users``). Every answer is a list of runs, one per run acted on, as the client
requires (section 5.2: it indexes ``[0]``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from graphql import GraphQLResolveInfo

from events import commands
from events.config import ConfigError, from_mapping, to_spec
from events.spec import PRIORITIES, Priority
from services.api import wire
from services.api.context import Context, context_of
from services.api.errors import BadRequest
from services.api.runs import refused

Json = dict[str, Any]


async def create_run(_: object, info: GraphQLResolveInfo[Context], **args: Any) -> list[Json]:
    context = context_of(info)
    run_input = args["createRunData"]["runInput"]
    if not isinstance(run_input, dict):
        raise BadRequest("Bad run request: runInput must be an object of run fields")
    try:
        config, _ = from_mapping(wire.config_of_input(run_input), where="runInput")
        spec, _ = to_spec(config, where="runInput")
    except ConfigError as error:
        raise BadRequest(f"Bad run request: {error}") from None
    try:
        commands.check_metadata(spec.name, spec.metadata, context.settings.api_max_metadata_bytes)
    except commands.MetadataTooLarge as error:
        raise refused(spec.name, error) from None
    parent = wire.parent_of_input(run_input)
    return [wire.run(*await context.runs.submit(context.principal, spec, parent=parent))]


async def stop_runs(_: object, info: GraphQLResolveInfo[Context], **args: Any) -> list[Json]:
    context = context_of(info)
    reason = (args.get("stopRunsData") or {}).get("reason") or ""
    command = commands.StopRun(actor=context.principal.name, reason=reason)
    return await _carry_out(context, args["getRunsData"], command)


async def start_runs(_: object, info: GraphQLResolveInfo[Context], **args: Any) -> list[Json]:
    context = context_of(info)
    command = commands.RestartRun(actor=context.principal.name)
    return await _carry_out(context, args["getRunsData"], command)


async def delete_runs(_: object, info: GraphQLResolveInfo[Context], **args: Any) -> list[Json]:
    context = context_of(info)
    command = commands.DeleteRun(actor=context.principal.name)
    return await _carry_out(context, args["getRunsData"], command)


async def update_run(_: object, info: GraphQLResolveInfo[Context], **args: Any) -> list[Json]:
    context = context_of(info)
    data: Json = args["updateRunData"]
    seconds = data.get("maxDurationSeconds")
    retries = data.get("maxRetries")
    if retries is not None and retries < 0:
        raise BadRequest(f"updateRunData.maxRetries: {retries} is negative")
    if seconds is not None and seconds <= 0:
        raise BadRequest(f"updateRunData.maxDurationSeconds: {seconds} is not positive")
    command = commands.UpdateRun(
        actor=context.principal.name,
        priority=_priority(data.get("priority")),
        preemptible=data.get("preemptible"),
        max_retries=retries,
        retry_on_system_failure=data.get("retryOnSystemFailure"),
        max_duration=None if seconds is None else seconds / 3600,
    )
    return await _carry_out(context, args["getRunsData"], command)


async def update_run_metadata(
    _: object, info: GraphQLResolveInfo[Context], **args: Any
) -> list[Json]:
    """Merge into the run's metadata: the keys given change, the others stay (section 5.7);
    keys resent with the values they have append nothing, and the run's metadata is held to
    ``api_max_metadata_bytes`` (413)."""
    context = context_of(info)
    metadata = args["updateRunMetadataData"]["metadata"]
    if not isinstance(metadata, dict):
        raise BadRequest("updateRunMetadataData.metadata must be an object of keys and values")
    command = commands.UpdateMetadata(
        actor=context.principal.name,
        metadata=metadata,
        max_bytes=context.settings.api_max_metadata_bytes,
    )
    return await _carry_out(context, args["getRunsData"], command)


def _priority(value: str | None) -> Priority | None:
    if value is None:
        return None
    for name in PRIORITIES:
        if value.lower() == name:
            return name
    raise BadRequest(f"updateRunData.priority: {value!r} is not one of {', '.join(PRIORITIES)}")


async def _carry_out(context: Context, selection: Json, command: commands.Command) -> list[Json]:
    filters: Json = selection.get("filters") or {}
    others = sorted(key for key, value in filters.items() if key != "name" and value)
    if others:
        raise BadRequest(
            f"getRunsData.filters.{others[0]}: requests select runs by name only "
            "(filters.name.in); list the runs first and name them"
        )
    chosen: Json = filters.get("name") or {}
    names = list(chosen.get("in") or [])
    if chosen.get("equals") is not None:
        names.append(chosen["equals"])
    views = await context.runs.carry_out(
        context.principal, names, command, all_users=bool(selection.get("entity"))
    )
    return [wire.run(*view) for view in views]


RESOLVERS: dict[str, Callable[..., Any]] = {
    "createRun": create_run,
    "stopRuns": stop_runs,
    "startRuns": start_runs,
    "deleteRuns": delete_runs,
    "updateRun": update_run,
    "updateRunMetadata": update_run_metadata,
}
