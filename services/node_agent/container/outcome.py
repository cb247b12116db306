"""What the engine says about a container and a pull, as what the agent reports.

- ``observe(inspected)``: one object of ``podman inspect --format json`` as a ``Seen``: its
  labels, whether it runs, its exit code, whether the kernel killed it for memory;
- ``reason(seen, attempt, stopping, oom)``: why a rank whose container ended ended, as
  ``rank.exited`` carries it: ``OOMKilled`` (user) when its memory limit killed it; a stop's
  reason when the agent stopped it; else the exit code, as on the ``process`` executor;
- ``engine_error(stderr)``: the engine's own last words, e.g. the registry's message of a
  failed pull (``... manifest unknown``, ``unauthorized: authentication required``).

Pure: no IO.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from events.lifecycle import AttemptState
from events.model import Reason
from services.node_agent.job import ExitStatus
from services.node_agent.plan import exit_reason

#: The engine's states of a container that has not ended (podman's words; Docker's are a subset).
_LIVE = frozenset({"created", "configured", "initialized", "running", "paused", "stopping"})
_MESSAGE_MAX = 2000


class Seen(NamedTuple):
    status: str  # created, running, exited, ...
    labels: Mapping[str, str]
    exit_code: int | None = None  # once it ended
    oom_killed: bool = False
    pid: int | None = None  # of its init, while it runs
    started: bool = False  # it ran (it may have ended since)
    error: str = ""  # the runtime's error, if its command could not start
    image: str = ""

    @property
    def ended(self) -> bool:
        return self.status not in _LIVE

    @property
    def running(self) -> bool:
        return self.status == "running"


def observe(inspected: Mapping[str, Any]) -> Seen:
    """One container as ``inspect`` describes it; missing fields read as absent."""
    state: Mapping[str, Any] = inspected.get("State") or {}
    config: Mapping[str, Any] = inspected.get("Config") or {}
    status = str(state.get("Status") or "").lower() or "unknown"
    code = state.get("ExitCode")
    pid = state.get("Pid")
    started_at = str(state.get("StartedAt") or "")
    ended = status not in _LIVE
    return Seen(
        status=status,
        labels={str(k): str(v) for k, v in (config.get("Labels") or {}).items()},
        exit_code=code if ended and isinstance(code, int) else None,
        oom_killed=bool(state.get("OOMKilled")),
        pid=pid if isinstance(pid, int) and pid > 0 else None,
        started=status == "running" or (bool(started_at) and not started_at.startswith("0001")),
        error=str(state.get("Error") or ""),
        image=str(inspected.get("Image") or ""),
    )


def reason(
    seen: Seen, attempt: AttemptState, *, stopping: bool, oom: bool, memory: str | None
) -> Reason | None:
    """The reason ``rank.exited`` carries for a container that ended; None for exit 0.
    ``oom``: the kernel killed it for its memory (``seen.oom_killed``, or the engine's
    monitor said so elsewhere)."""
    if (oom or seen.oom_killed) and seen.exit_code != 0:
        limit = f" of {memory}" if memory else ""
        return Reason(
            category="user",
            code="OOMKilled",
            exit_code=seen.exit_code,
            message=f"the command ran out of its memory{limit} and was killed "
            f"(exit code {seen.exit_code})",
        )
    status = ExitStatus(exit_code=seen.exit_code, stopped=stopping)
    return exit_reason(status, attempt)


def engine_error(stderr: bytes | str) -> str:
    """The engine's error from its stderr: its last ``Error:`` line without the prefix (the
    registry's own words end it), else its last line."""
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("Error:", "Error response"))]
    last = (errors or lines or ["the engine failed and said nothing"])[-1]
    return last.removeprefix("Error:").strip()[-_MESSAGE_MAX:]
