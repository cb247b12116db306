"""Errors of the node-agent. Each says what happened to a rank and carries what to act on.

Standard library only (the shim's modules raise them too).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from events.model import Reason


class NodeAgentError(Exception):
    """Root of the node-agent's errors."""


class RankGone(NodeAgentError):
    """The log says this rank is over (it exited, or its attempt moved on): stop working on it
    and end whatever still runs of it. Permanent."""


class RankEnded(NodeAgentError):
    """The rank's exit was reported (during setup): nothing more to do."""


class SetupAborted(NodeAgentError):
    """The attempt is stopping while this rank is still in setup."""

    def __init__(self, reason: Reason) -> None:
        super().__init__(f"setup aborted: {reason.code}")
        self.reason = reason


class IntegrationError(NodeAgentError):
    """An integration that cannot be carried out as written. Permanent."""


class StepFailed(NodeAgentError):
    """A setup tool (git, pip, apt-get) failed; the message ends with its last words."""


#: Error replies that say the server cannot take the command *now* (it is loading its data
#: after a restart, busy with a script, a replica during a failover, out of memory or disk):
#: the command was not carried out and may be sent again later.
TRANSIENT_ERRORS = frozenset(
    {"LOADING", "BUSY", "TRYAGAIN", "MASTERDOWN", "READONLY", "MISCONF", "OOM", "CLUSTERDOWN"}
)


class RespError(NodeAgentError):
    """The Redis server answered a command with an error: permanent for that command, unless
    ``transient`` (the command was not carried out; send it again later)."""

    @property
    def transient(self) -> bool:
        return str(self).split(" ", 1)[0] in TRANSIENT_ERRORS or self.moved_to is not None

    @property
    def moved_to(self) -> tuple[str, int] | None:
        """The node a cluster's ``MOVED <slot> <host>:<port>`` names (the command was not
        carried out: send it there)."""
        words = str(self).split(" ")
        if len(words) != 3 or words[0] != "MOVED":
            return None
        host, _, port = words[2].rpartition(":")
        return (host, int(port)) if port.isdigit() else None


class IsolationError(NodeAgentError):
    """A rank cannot be given a user of its own on this node (``isolation``); the message says
    what the platform team can do. Permanent for that rank."""
