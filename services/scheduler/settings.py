"""Settings of the scheduler process (``RUNPLANE_*`` environment variables)."""

from __future__ import annotations

import socket

from pydantic import Field

from services.core import timeouts
from services.core.settings import Settings


def _default_id() -> str:
    return f"scheduler@{socket.gethostname()}"


class SchedulerSettings(Settings):
    node_timeout_s: float = Field(
        default=timeouts.NODE_TIMEOUT_S,
        gt=0,
        description=(
            "Grace before a node's missing heartbeat key counts: after its registration, and "
            "after this instance became active (for nodes registered before)."
        ),
    )
    silent_share: float = Field(
        default=timeouts.SILENT_SHARE,
        gt=0,
        le=1,
        description="When at least this share of the watched nodes (two or more) is silent at "
        "once, none is declared lost: a shared outage (Valkey down or failing over), not the "
        "nodes (docs/fencing.md). 1: only when every node is silent.",
    )
    lease_ttl_ms: int = Field(
        default=5000, ge=200, description="Expiry of the active scheduler's lease; renewed at 1/3."
    )
    tick_ms: int = Field(
        default=500,
        ge=10,
        description="Longest wait between two decision rounds (heartbeats, max_duration).",
    )
    round_min_ms: int = Field(
        default=20,
        ge=0,
        description="Shortest time from the start of one decision round to the next: what "
        "arrives meanwhile is decided together, so a busy log does not pay each round's fixed "
        "cost (the log's clock, a queue pass, a round trip of appends) for every few events.",
    )
    scheduler_id: str = Field(
        default_factory=_default_id,
        description="The actor of the scheduler's events (`scheduler@host`).",
    )
