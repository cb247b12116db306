"""What the engine says, as what the agent reports: a container's state from ``inspect``, why
its rank ended, and the engine's last words (a registry's message)."""

from __future__ import annotations

from typing import Any

from events.lifecycle import AttemptState
from events.model import Reason
from events.status import RunStatus
from services.node_agent.container.outcome import Seen, engine_error, observe, reason

STOPPED = Reason(category="stopped", code="Stopped", message="stopped by alice")


def inspected(status: str, **state: Any) -> dict[str, Any]:
    return {
        "Image": "abc",
        "State": {"Status": status, **state},
        "Config": {"Labels": {"runplane.dev/rank": "0"}},
    }


def attempt(stopping: Reason | None = None) -> AttemptState:
    status = RunStatus.TERMINATING if stopping else RunStatus.RUNNING
    return AttemptState(index=0, status=status, reason=stopping)


def test_a_running_container() -> None:
    seen = observe(inspected("running", Pid=4242, ExitCode=0, StartedAt="2026-01-01T00:00:00Z"))
    assert (seen.running, seen.ended, seen.started, seen.pid, seen.exit_code) == (
        True, False, True, 4242, None,
    )  # fmt: skip
    assert seen.labels == {"runplane.dev/rank": "0"}


def test_an_exited_one_and_one_never_started() -> None:
    seen = observe(inspected("exited", Pid=0, ExitCode=3, StartedAt="2026-01-01T00:00:00Z"))
    assert (seen.ended, seen.started, seen.pid, seen.exit_code) == (True, True, None, 3)
    created = observe(inspected("created", StartedAt="0001-01-01T00:00:00Z", ExitCode=0))
    assert (created.ended, created.started, created.exit_code) == (False, False, None)
    assert observe({}).status == "unknown"  # missing fields read as absent


def test_an_exit_code_is_a_users_error_and_zero_is_none() -> None:
    failed = reason(Seen("exited", {}, exit_code=3), attempt(), stopping=False, oom=False,
                    memory=None)  # fmt: skip
    assert failed is not None
    assert (failed.category, failed.code, failed.exit_code) == ("user", "Error", 3)
    ok = Seen("exited", {}, exit_code=0)
    assert reason(ok, attempt(), stopping=False, oom=False, memory=None) is None


def test_oom_from_the_engine_or_its_monitor() -> None:
    for seen, oom in ((Seen("exited", {}, exit_code=137, oom_killed=True), False),
                      (Seen("exited", {}, exit_code=137), True)):  # fmt: skip
        why = reason(seen, attempt(), stopping=False, oom=oom, memory="32m")
        assert why is not None
        assert (why.category, why.code, why.exit_code) == ("user", "OOMKilled", 137)
        assert "of 32m" in why.message


def test_a_stopped_container_carries_the_stops_reason() -> None:
    seen = Seen("exited", {}, exit_code=143)
    assert reason(seen, attempt(STOPPED), stopping=True, oom=False, memory=None) == STOPPED
    # Not stopped by this agent: its own exit code says why.
    own = reason(seen, attempt(STOPPED), stopping=False, oom=False, memory=None)
    assert own is not None
    assert own.code == "Error"


def test_the_engines_last_words_end_with_the_registrys() -> None:
    stderr = (
        b"Trying to pull 127.0.0.1:5000/nope:1...\n"
        b"Error: initializing source docker://127.0.0.1:5000/nope:1: reading manifest 1 in "
        b"127.0.0.1:5000/nope: manifest unknown: manifest unknown\n"
    )
    assert engine_error(stderr).endswith("manifest unknown: manifest unknown")
    assert not engine_error(stderr).startswith("Error")
    assert engine_error(b"something odd\n") == "something odd"
    assert engine_error(b"") == "the engine failed and said nothing"
