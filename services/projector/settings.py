"""The projector's settings (``RUNPLANE_*``), on top of every process's."""

from __future__ import annotations

import socket
from decimal import Decimal

from pydantic import Field

from services.core.settings import Settings


class ProjectorSettings(Settings):
    projector_group: str = Field(default="projector", description="Its consumer group.")
    projector_consumer: str = Field(
        default_factory=lambda: f"projector@{socket.gethostname()}",
        description="Its consumer name in the group.",
    )
    projector_batch: int = Field(
        default=1000, ge=1, description="Entries read (and stored in one transaction) at most."
    )
    projector_poll_ms: int = Field(default=100, ge=1, description="Blocking read timeout.")
    projector_page: int = Field(default=5000, ge=1, description="Entries per catch-up read.")
    projector_commit_every: int = Field(
        default=100_000, ge=1, description="Catch-up entries between two stored batches."
    )
    projector_lease_ttl_ms: int = Field(
        default=5_000,
        ge=100,
        description="Lease expiry: a standby projector takes over this long after the active "
        "one died (at once after a clean stop).",
    )
    projector_retire_after_s: float = Field(
        default=60.0, ge=0, description="A build readers left is dropped this long after."
    )
    projector_rest_s: float = Field(
        default=60.0,
        ge=0,
        description="Log time a run stays in the projector's memory once at rest (ended), "
        "before it leaves it (read back from its rows if the log says more of it).",
    )
    projector_cool_every_s: float = Field(
        default=5.0,
        gt=0,
        description="Between two passes that move the rows of archived runs (their history "
        "retired to the archive) out of Valkey, to Parquet beside the archive.",
    )
    projector_cool_runs: int = Field(
        default=1000, ge=1, description="Runs a pass of the cooler looks at, at most."
    )
    gpu_prices: dict[str, Decimal] = Field(
        default_factory=dict,
        description='Price per GPU-hour per gpu_type for billing reports, e.g. {"a100": "2.5"}.',
    )
