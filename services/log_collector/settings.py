"""Settings of the log-collector, from ``RUNPLANE_*`` environment variables."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Self

from pydantic import Field, model_validator

from services.core.archive import ArchiveSettings


class LogCollectorSettings(ArchiveSettings):
    archive_dir: Path = Field(
        default=Path("runplane-logs"),
        description="Where finished attempts' output is archived: <run>/<attempt>/rank-<k>.log, "
        "and meta.json once the attempt's events are archived. Every log-collector needs it.",
    )
    collector_name: str = Field(
        default_factory=socket.gethostname,
        description="This collector's consumer name; keep it across restarts of one instance.",
    )
    ingest_batch: int = Field(
        default=1000, ge=1, le=100_000, description="Lines read and stored per round trip."
    )
    ingest_block_ms: int = Field(
        default=1000, ge=1, description="How long one read of the ingest stream waits for lines."
    )
    archive_poll_ms: int = Field(
        default=500, ge=10, description="How often finished attempts are looked for to archive."
    )
    lease_ttl_ms: int = Field(
        default=10_000,
        ge=300,
        description="The ingest lease's expiry; a standby takes over this long after a crash.",
    )
    serve_workers: int = Field(
        default=4, ge=1, description="Requests for archived lines served at once."
    )
    serve_chunk_bytes: int = Field(
        default=1 << 20, ge=1024, description="Size of one reply chunk (about; whole lines)."
    )
    reply_ttl_s: int = Field(
        default=60, ge=1, description="A reply nobody reads expires after this long."
    )

    @model_validator(mode="after")
    def _retained_somewhere(self) -> Self:
        if self.retain is not None and self.event_archive is None:
            raise ValueError(
                "RUNPLANE_RETAIN needs RUNPLANE_EVENT_ARCHIVE: the directory the log is "
                "archived to (the local stack sets it)"
            )
        return self
