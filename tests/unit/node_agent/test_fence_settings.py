"""The fence's settings keep their order (services.core.timeouts), the lease reads back, and a
fenced rank ends as a system failure."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from events.lifecycle import AttemptState
from services.core import timeouts
from services.node_agent.job import ExitStatus
from services.node_agent.plan import exit_reason
from services.node_agent.settings import NodeAgentSettings
from services.node_agent.shim import lease


@pytest.fixture(autouse=True)
def _no_outer_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in os.environ:
        if name.startswith("RUNPLANE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("RUNPLANE_GPUS", "0")


def test_the_defaults_fence_before_the_node_can_be_declared_lost() -> None:
    settings = NodeAgentSettings()
    fence_timeout_s, fence_grace_s = settings.fence_s
    assert (fence_timeout_s, fence_grace_s) == (5, 2)
    assert settings.fence_on_disconnect is False
    deadline = fence_timeout_s + timeouts.fence_poll_s(fence_timeout_s) + fence_grace_s
    assert deadline < settings.heartbeat_ttl_s


def test_the_fence_defaults_follow_a_shorter_heartbeat_expiry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RUNPLANE_HEARTBEAT_TTL_S", "3")
    fence_timeout_s, fence_grace_s = NodeAgentSettings().fence_s
    assert (fence_timeout_s, round(fence_grace_s, 6)) == (1.5, 0.6)


@pytest.mark.parametrize(
    ("timeout", "grace"), [("8", None), ("5", "5"), ("9.9", "0")], ids=["timeout", "grace", "poll"]
)
def test_a_fence_that_could_outlive_the_heartbeat_is_refused(
    monkeypatch: pytest.MonkeyPatch, timeout: str, grace: str | None
) -> None:
    monkeypatch.setenv("RUNPLANE_FENCE_TIMEOUT_S", timeout)
    if grace is not None:
        monkeypatch.setenv("RUNPLANE_FENCE_GRACE_S", grace)
    with pytest.raises(ValidationError, match="must be less than heartbeat_ttl_s"):
        NodeAgentSettings()


def test_the_lease_expires_after_the_fence_timeout(tmp_path: Path) -> None:
    path = tmp_path / lease.LEASE
    assert not lease.expired(path, 1.0, at=100.0)  # no lease: nothing to fence on
    lease.renew(path, 50.0)
    assert lease.renewed_at(path) == 50.0
    assert not lease.expired(path, 1.0, at=51.0)
    assert lease.expired(path, 1.0, at=51.5)


def test_a_fenced_rank_ends_as_a_system_failure_even_with_exit_code_0() -> None:
    attempt = AttemptState(index=0)
    for status in (ExitStatus(signal=15, fenced=True), ExitStatus(exit_code=0, fenced=True)):
        reason = exit_reason(status, attempt)
        assert reason is not None
        assert (reason.category, reason.code) == ("system", "NodeFenced")
