"""What the mcli command and the SDK share: runplane's API server, as one client.

Every read and request goes to the API server (``cli.api``: found as the real mcli client finds
it, else the local stack's); nothing here opens the log. The server decides: who the key is,
whether they may, whether the run's state allows it, what is appended. This client shapes
requests (MAPI's mutations with ``filters.name``, ``entity`` for ``--all-users``) and turns the
answers back into the read models' own structs, so folds and views are the projector's.
"""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from cli.api import Api, find_api
from cli.errors import ClientError, NotFound
from events import commands
from events.access import Action
from events.codec import Recorded
from events.spec import RunSpec
from events.tokens import PLATFORM
from projections.attempts import AttemptRow
from projections.audit import Entry
from projections.billing import Report
from projections.run_status import RunRow
from projections.utilization import ClusterUtilization
from services.api.wire import RunSelection, WireRecord, run_input

RunView = tuple[RunRow, list[AttemptRow]]
_ANSWER = "{ id name status }"
_CREATE = """
mutation CreateRun($createRunData: CreateRunInput!) {
  createRun(createRunData: $createRunData) { id name status view }
}"""
#: Each request's mutation: its field, and its argument besides getRunsData (name, type).
_MUTATIONS: dict[type[commands.Command], tuple[str, tuple[str, str] | None]] = {
    commands.StopRun: ("stopRuns", ("stopRunsData", "StopRunsInput")),
    commands.RestartRun: ("startRuns", None),
    commands.DeleteRun: ("deleteRuns", None),
    commands.UpdateRun: ("updateRun", ("updateRunData", "UpdateRunInput!")),
    commands.UpdateMetadata: (
        "updateRunMetadata",
        ("updateRunMetadataData", "UpdateRunMetadataInput!"),
    ),
}
_WHOAMI = "query { whoami { name role } }"
_HISTORY = """
query History($name: String!, $action: String, $allUsers: Boolean) {
  runHistory(name: $name, action: $action, allUsers: $allUsers)
}"""
_VIEWS = "query Views($selection: JSON!) { runViews(selection: $selection) }"
_UTILIZATION = "query Util($clusters: [String!]) { utilization(clusters: $clusters) }"
_BILLING = """
query Billing($by: String!, $since: Float, $until: Float, $now: Float!, $prices: JSON) {
  billing(by: $by, since: $since, until: $until, now: $now, prices: $prices)
}"""
_AUDIT = """
query Audit($user: String, $run: String, $since: Float, $until: Float, $limit: Int) {
  audit(user: $user, run: $run, since: $since, until: $until, limit: $limit)
}"""
_LOGS = """
subscription Logs($getRunLogsInput: GetRunLogsInput!) {
  getRunLogsV2(getRunLogsInput: $getRunLogsInput) { chunk endOffset }
}"""
_EVERYONE = {"organizationIds": ["runplane"]}


def _mutation(command: commands.Command) -> tuple[str, dict[str, Any]]:
    """The document of a request on runs and its variables besides ``getRunsData``."""
    field, extra = _MUTATIONS[type(command)]
    declared = f", ${extra[0]}: {extra[1]}" if extra else ""
    passed = f", {extra[0]}: ${extra[0]}" if extra else ""
    document = (
        f"mutation Request($getRunsData: GetRunsInput!{declared}) "
        f"{{ {field}(getRunsData: $getRunsData{passed}) {_ANSWER} }}"
    )
    match command:
        case commands.StopRun():
            reason = {"reason": command.reason} if command.reason else None
            return document, {"stopRunsData": reason}
        case commands.UpdateRun():
            seconds = None if command.max_duration is None else round(command.max_duration * 3600)
            data = {
                "priority": command.priority,
                "preemptible": command.preemptible,
                "maxRetries": command.max_retries,
                "retryOnSystemFailure": command.retry_on_system_failure,
                "maxDurationSeconds": seconds,
            }
            return document, {"updateRunData": {k: v for k, v in data.items() if v is not None}}
        case commands.UpdateMetadata():
            return document, {"updateRunMetadataData": {"metadata": command.metadata}}
        case _:
            return document, {}


def _view(data: dict[str, Any]) -> RunView:
    """A run as runplane's own reads give it (``services.api.wire.view``)."""
    return msgspec.convert(data["row"], RunRow), msgspec.convert(data["attempts"], list[AttemptRow])


class Client:
    def __init__(self, api: Api) -> None:
        self.api = api
        #: The key's owner and whether they are an admin, as the server says (``ping``).
        self.user = ""
        self.admin = False

    @classmethod
    def discover(cls) -> Client:
        return cls(find_api())

    async def close(self) -> None:
        """Nothing to close: each call is its own request."""

    async def ping(self) -> None:
        """Who the key is (``Unreachable`` unless the API answers, 401 for a bad key)."""
        who = (await self.api.call(_WHOAMI))["whoami"]
        self.user, self.admin = who["name"], who["role"] == "admin"

    # --- requests ---------------------------------------------------------------------

    async def submit(self, spec: RunSpec) -> RunView:
        """Submit a new run; the run as submitted (its row and its attempt 0)."""
        submitted = run_input(spec)
        if os.environ.get(PLATFORM, "").lower() == "true" and os.environ.get("RUN_NAME"):
            submitted["parentName"] = os.environ["RUN_NAME"]  # from inside a run, as mcli does
        data = await self.api.call(_CREATE, {"createRunData": {"runInput": submitted}})
        [run] = data["createRun"]
        return _view(run["view"])

    async def request(self, run: str, command: commands.Command, *, all_users: bool = False) -> str:
        """Carry out a stop, restart, delete or update of ``run`` (another user's with
        ``all_users``); the run's name. ``ClientError`` if the server refuses it."""
        document, variables = _mutation(command)
        selection: dict[str, Any] = {"filters": {"name": {"in": [run]}}}
        if all_users:
            selection["entity"] = _EVERYONE
        data = await self.api.call(document, {"getRunsData": selection, **variables})
        [answer] = next(iter(data.values()))
        return str(answer["name"])

    # --- reads ------------------------------------------------------------------------

    async def history(
        self, run: str, action: Action = Action.DESCRIBE, *, all_users: bool = True
    ) -> tuple[str, list[Recorded]]:
        """The run id of ``run`` (name or id) and every event of its own history, in order, if
        this user may ``action`` it (another user's takes ``all_users``)."""
        variables = {"name": run, "action": action.name, "allUsers": all_users}
        data = await self.api.call(_HISTORY, variables)
        records = [msgspec.convert(r, WireRecord).recorded() for r in data["runHistory"]]
        if not records:
            raise NotFound(f"Run {run} not found")
        event = records[0].event
        return str(getattr(event, "run_id", run)), records

    async def views(self, selection: RunSelection) -> list[RunView]:
        """Runs newest first with their attempts, as the projector has them."""
        data = await self.api.call(_VIEWS, {"selection": msgspec.to_builtins(selection)})
        return [_view(v) for v in data["runViews"]]

    async def utilization(self, clusters: list[str] | None = None) -> list[ClusterUtilization]:
        data = await self.api.call(_UTILIZATION, {"clusters": clusters})
        return msgspec.convert(data["utilization"], list[ClusterUtilization])

    async def billing(
        self,
        by: str,
        *,
        window: tuple[int, int] | None,
        now: int,
        prices: dict[str, str] | None,
    ) -> tuple[Report, dict[str, str]]:
        """The bill grouped ``by``, and the names of its runs (by run id) when by run."""
        since, until = window if window is not None else (None, None)
        variables = {"by": by, "since": since, "until": until, "now": now, "prices": prices}
        data = (await self.api.call(_BILLING, variables))["billing"]
        return msgspec.convert(data["report"], Report), dict(data["names"])

    async def audit(
        self,
        *,
        user: str | None,
        run: str | None,
        window: tuple[int, int] | None,
        limit: int,
    ) -> list[Entry]:
        since, until = window if window is not None else (None, None)
        variables = {"user": user, "run": run, "since": since, "until": until, "limit": limit}
        data = await self.api.call(_AUDIT, variables)
        return msgspec.convert(data["audit"], list[Entry])

    async def output(
        self,
        run: str,
        attempt: int,
        rank: int | None,
        *,
        failed: bool = False,
        tail: int | None = None,
        follow: bool = False,
    ) -> AsyncIterator[bytes]:
        """A rank's output as the server streams it (``getRunLogsV2``): raw bytes, to the end
        of what there is, or with ``follow`` until the resumption ends."""
        asked: dict[str, Any] = {
            "name": run,
            "attemptIndex": attempt,
            "follow": follow,
            "failed": failed,
            "offset": 0,
        }
        if rank is not None:
            asked["nodeRank"] = rank
        if tail is not None:
            asked["tail"] = tail
        async for data in self.api.subscribe(_LOGS, {"getRunLogsInput": asked}):
            yield base64.b64decode(data["getRunLogsV2"]["chunk"])


__all__ = ["Client", "ClientError", "NotFound", "RunView"]
