"""Requests on runs, decided behind the API: submit, stop, restart, delete, update (its
scheduling, or its metadata).

Every request comes from a principal, the owner of the key it came with, and names its runs.
Invariants:
- who may do what is ``events.access`` alone: another user's run is not found (404) to a user,
  and an admin acts on it only when the request says it means someone else's (``all_users``,
  MAPI's ``entity``; 403 otherwise, with what to add);
- a request is decided on the run's state read from its own history and appended on that
  version (``EventStore.update_run``), so nothing half-written reaches the log; a lost race
  re-reads and re-decides;
- a request that names several runs is checked against every one of them (found, allowed,
  possible in its state) before anything is written, so one refusal refuses the whole request;
- a run name is reserved (``SET NX``) before its run is submitted, so names are unique; a
  submit is first checked against the cluster's registered nodes by the scheduler's own fit
  rule (``events.fit``), so a request that can never run is refused, not left to fail in the
  queue;
- the actor of every event is the principal, never anything the client says; a request made
  with a run's token is recorded as its owner's, ``via`` that run's attempt;
- a run submitted from inside a run (a run's token, or ``parentName``) records that run as its
  parent; a parent must be a run the principal may submit children of (``events.access``);
- a request refused for a run that exists (another user's, or an admin's without
  ``all_users``) is recorded (``request.refused``) before the answer, so the audit shows it.
"""

from __future__ import annotations

import secrets
import string
import uuid
from collections.abc import Callable, Sequence

import msgspec

from events import access, commands, keys
from events.access import Action, Principal
from events.codec import Recorded
from events.errors import IllegalTransition
from events.fit import InstanceType, Refusal, shapes, unknown_cluster
from events.lifecycle import RunState
from events.model import AnyRunEvent, RequestRefused, run_aggregate
from events.spec import Compute, RunSpec
from projections import query
from projections.attempts import AttemptRow
from projections.run_status import RunRow
from projections.runview import fold_run
from services.api.errors import ApiError, BadRequest, Conflict, Forbidden, NotFound, TooLarge
from services.core.store import EventStore

RunView = tuple[RunRow, list[AttemptRow]]
_SUFFIX = string.ascii_lowercase
_ACTIONS: dict[type[commands.Command], Action] = {  # a submit has no owner yet
    commands.StopRun: Action.STOP,
    commands.RestartRun: Action.RESTART,
    commands.DeleteRun: Action.DELETE,
    commands.UpdateRun: Action.UPDATE,
    commands.UpdateMetadata: Action.UPDATE_METADATA,
}


def new_id() -> str:
    return uuid.uuid4().hex


def forbidden(denied: access.AccessDenied) -> Forbidden:
    if denied.token:
        return Forbidden(
            "A run's token may only read its own run, change its metadata and submit its "
            f"children; to {denied.action} it, use an API key (`mcli set api-key`)"
        )
    if denied.admin:
        hint = f"add --all-users to {denied.action} another user's run"
    else:
        hint = f"only an admin may {denied.action} another user's run (with --all-users)"
    return Forbidden(f"Run {denied.run} belongs to {denied.owner}, not {denied.actor}: {hint}")


def deleted(run: str) -> Conflict:
    """A request for a deleted run (stop, delete, update, restart): the one answer to all."""
    return Conflict(
        f"Run {run} is deleted and accepts no more requests; its history stays readable "
        f"(`mcli describe run {run}`), and `mcli run --clone {run}` submits a copy"
    )


def refused(run: str, error: commands.RequestRefused | IllegalTransition) -> ApiError:
    if isinstance(error, commands.RunIsDeleted):
        return deleted(error.run)
    if isinstance(error, commands.MetadataTooLarge):
        return TooLarge(f"Run {run}: {error.why}")
    return Conflict(f"Run {run}: {error.why}")


class RunRequests:
    def __init__(self, store: EventStore) -> None:
        self.store = store

    # --- reading ----------------------------------------------------------------------

    async def resolve(self, run: str) -> str | None:
        """The run id of a run name (or of a run id); None if there is no such run. A name is
        reserved here at submission and kept until the run's rows are archived (cooled): the
        projection knows it from then on (``query.run_named``)."""
        run_id = await self.store.redis.get(keys.run_name(run))
        if isinstance(run_id, bytes):
            return run_id.decode()
        if await self.store.history(run_aggregate(run)):
            return run
        return await query.run_named(self.store.redis, run)

    async def history(
        self, principal: Principal, run: str, action: Action, *, all_users: bool = True
    ) -> tuple[str, list[Recorded]]:
        """The run id and history of ``run``, if ``principal`` may ``action`` it; reads pass
        ``all_users`` (an admin may read any run)."""
        run_id, records, _ = await self._found(principal, run, action, all_users)
        return run_id, records

    async def view(self, principal: Principal, run: str, action: Action) -> RunView:
        """The run's row and attempts folded now from its history (read-your-writes)."""
        return (await self._found(principal, run, action, True))[2]

    async def _found(
        self, principal: Principal, run: str, action: Action, all_users: bool
    ) -> tuple[str, list[Recorded], RunView]:
        """``run``'s id, history and fold, once ``principal`` may ``action`` it."""
        run_id = await self.resolve(run)
        records = await self.store.history(run_aggregate(run_id)) if run_id is not None else []
        folded = fold_run(run_id, records) if run_id is not None else None
        if run_id is None or folded is None:
            raise NotFound(f"Run {run} not found")
        try:
            self.authorize(
                principal, action, run, folded[0].created_by, run_id, all_users=all_users
            )
        except ApiError as refusal:
            raise await self.refused(principal, action.name.lower(), run, refusal, run_id) from None
        return run_id, records, folded

    async def named(self, names: Sequence[str]) -> list[RunView]:
        """The runs of ``names`` (names or ids) that exist, folded now from their histories;
        the caller decides which of them the asker may see."""
        found: dict[str, RunView] = {}
        for name in dict.fromkeys(names):
            run_id = await self.resolve(name)
            if run_id is not None and run_id not in found:
                records = await self.store.history(run_aggregate(run_id))
                if (folded := fold_run(run_id, records)) is not None:
                    found[run_id] = folded
        return list(found.values())

    async def _view_of(self, run_id: str) -> RunView:
        folded = fold_run(run_id, await self.store.history(run_aggregate(run_id)))
        assert folded is not None, f"run {run_id} has no history after an append"
        return folded

    # --- submitting -------------------------------------------------------------------

    async def submit(
        self, principal: Principal, spec: RunSpec, *, parent: str | None = None
    ) -> RunView:
        """Check ``spec`` against its cluster and its ``parent`` (a run name), reserve a unique
        name, append the submit."""
        parent = await self.parent_of(principal, parent)
        await self.check_fits(spec.compute)
        return await self._view_of(await self.append_submit(principal, spec, parent=parent))

    async def parent_of(self, principal: Principal, parent: str | None) -> str | None:
        """The parent a submit records: the one asked for, once the principal may submit
        children of it; a run's token submits children of its own run, asked or not."""
        if parent is None:
            return None if principal.via is None else principal.via.run
        run_id = await self.resolve(parent)
        state = await self.store.load_run(run_id) if run_id is not None else None
        if run_id is None or state is None:
            raise NotFound(f"Parent run {parent} not found")
        try:
            self.authorize(
                principal, Action.SUBMIT_CHILD, state.name, state.created_by, run_id,
                all_users=False,
            )  # fmt: skip
        except ApiError as refusal:
            raise await self.refused(principal, "submit_child", parent, refusal, run_id) from None
        return state.name

    async def _reserve(self, name: str, run_id: str) -> bool:
        """Reserve ``name`` for ``run_id``: False if a run has it. The reservation of a run
        whose rows were archived (cooled) went, so the projection is asked too, after it: the
        cooler lets a name go only once the cold rows hold it."""
        key = keys.run_name(name)
        if not await self.store.redis.set(key, run_id, nx=True):
            return False
        if await query.run_named(self.store.redis, name) is None:
            return True
        await self.store.redis.delete(key)  # set just now, and only ever by this run
        return False

    async def append_submit(
        self, principal: Principal, spec: RunSpec, *, parent: str | None = None
    ) -> str:
        """Reserve a unique name and append the submit of a ``spec`` checked already; its run
        id. (``submit`` checks first; a load generator that knows its fleet calls this.)"""
        run_id = new_id()
        for _ in range(10):
            name = f"{spec.name}-{''.join(secrets.choice(_SUFFIX) for _ in range(6))}"
            if await self._reserve(name, run_id):
                break
        else:  # pragma: no cover - 26^6 names per base name
            raise Conflict(f"could not find a free name for {spec.name}: try another name")
        command = commands.SubmitRun(
            actor=principal.name, run_id=run_id, name=name, spec=spec, parent=parent
        )
        await self.store.update_run(run_id, _stamped(principal, command))
        return run_id

    async def check_fits(self, compute: Compute) -> None:
        """400 if the cluster is unknown or no set of its registered nodes could ever hold
        the request (``events.fit.shapes``: the scheduler's own rule)."""
        known = [c for c in await query.utilization(self.store.redis) if c.instances]
        cluster = next((c for c in known if c.cluster == compute.cluster), None)
        if cluster is None:
            raise BadRequest(unknown_cluster(compute.cluster, [c.cluster for c in known]))
        registered = {
            InstanceType(i.gpu_type, i.gpus_per_node): i.registered for i in cluster.instances
        }
        verdict = shapes(compute, registered)
        if isinstance(verdict, Refusal) and verdict.permanent:
            raise BadRequest(f"{verdict.message}: change the request's compute")

    # --- acting on runs ---------------------------------------------------------------

    async def carry_out(
        self,
        principal: Principal,
        runs: Sequence[str],
        command: commands.Command,
        *,
        all_users: bool = False,
    ) -> list[RunView]:
        """Carry out a stop, restart, delete or update of each of ``runs`` (names or ids):
        every one is checked before any is written. Returns each run as it is after."""
        if not runs:
            raise BadRequest("name no run: filters.name.in lists the runs to act on")
        action = _ACTIONS[type(command)]
        chosen: dict[str, str] = {}
        for run in dict.fromkeys(runs):
            run_id = await self.resolve(run)
            state = await self.store.load_run(run_id) if run_id is not None else None
            if run_id is None or state is None:
                raise NotFound(f"Run {run} not found")
            try:
                self.authorize(
                    principal, action, state.name, state.created_by, run_id, all_users=all_users
                )
            except ApiError as refusal:
                raise await self.refused(
                    principal, action.name.lower(), state.name, refusal, run_id
                ) from None
            try:
                commands.decide(state, command, new_id)
            except (commands.RequestRefused, IllegalTransition) as error:
                raise refused(state.name, error) from None
            chosen.setdefault(run_id, state.name)
        for run_id, name in chosen.items():
            await self._append(principal, run_id, name, command, action, all_users=all_users)
        return [await self._view_of(run_id) for run_id in chosen]

    async def _append(
        self,
        principal: Principal,
        run_id: str,
        name: str,
        command: commands.Command,
        action: Action,
        *,
        all_users: bool,
    ) -> None:
        decided = _stamped(principal, command)

        def decide(state: RunState | None) -> list[AnyRunEvent]:
            if state is not None:
                self.authorize(
                    principal, action, name, state.created_by, run_id, all_users=all_users
                )
            return decided(state)

        try:
            await self.store.update_run(run_id, decide)
        except (commands.RequestRefused, IllegalTransition) as error:
            raise refused(name, error) from None

    async def refused(
        self,
        principal: Principal,
        request: str,
        target: str,
        refusal: ApiError,
        run_id: str | None = None,
    ) -> ApiError:
        """``refusal``, once it is on the log for the audit (``request.refused``)."""
        event = RequestRefused(
            id=new_id(),
            actor=principal.name,
            user=principal.name,
            request=request,
            target=target,
            code=int(refusal.code),
            why=refusal.message,
            run_id=run_id,
            via=principal.via,
        )
        await self.store.append([event], expected_version=None)
        return refusal

    @staticmethod
    def authorize(
        principal: Principal, action: Action, run: str, owner: str, run_id: str, *, all_users: bool
    ) -> None:
        """``events.access.authorize`` in the API's errors: 404 or 403."""
        try:
            access.authorize(principal, action, run, owner, run_id, all_users=all_users)
        except access.RunNotFound as missing:
            raise NotFound(str(missing)) from None
        except access.AccessDenied as denied:
            raise forbidden(denied) from None


def _stamped(
    principal: Principal, command: commands.Command
) -> Callable[[RunState | None], list[AnyRunEvent]]:
    """The decision of ``command``, its events marked ``via`` the run whose token asked."""

    def decide(state: RunState | None) -> list[AnyRunEvent]:
        events = commands.decide(state, command, new_id)
        if principal.via is None:
            return events
        return [msgspec.structs.replace(event, via=principal.via) for event in events]

    return decide
