"""Settings of every runplane process, from ``RUNPLANE_*`` environment variables.

Read once at a process edge and passed down; pure code never reads the environment.
"""

from __future__ import annotations

import sys
from typing import TypeVar

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

S = TypeVar("S", bound=BaseSettings)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RUNPLANE_", extra="ignore")

    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0", description="The Redis or Valkey server of the log."
    )
    partitions: int = Field(
        default=1,
        ge=1,
        description="Partitions of the global log (only 1 for now: docs/scale.md).",
    )
    idempotency_ttl_s: int = Field(
        default=7 * 24 * 3600, ge=60, description="How long a retried append is recognised."
    )
    claim_idle_ms: int = Field(
        default=30_000,
        ge=100,
        description="A pending entry idle this long is claimed from its (presumed dead) consumer.",
    )
    max_deliveries: int = Field(
        default=5, ge=1, description="Deliveries of one entry before it goes to the dead letters."
    )

    @field_validator("partitions")
    @classmethod
    def _one_partition(cls, value: int) -> int:
        # The key layout and most consumers take P partitions, but the projector reads
        # partition 0 only: with more, runs would be missing from every listing and report.
        if value != 1:
            raise ValueError(
                "more than 1 partition is not supported yet (the projector reads partition 0 "
                "only); unset RUNPLANE_PARTITIONS"
            )
        return value


def invalid(exc: ValidationError) -> str:
    """One line naming every bad ``RUNPLANE_*`` variable and what is wrong with it."""
    return "; ".join(
        f"RUNPLANE_{'_'.join(str(part) for part in error['loc']).upper()}: "
        f"{error['msg'].removeprefix('Value error, ')}"
        for error in exc.errors()
    )


def load(cls: type[S], service: str) -> S:
    """A service's settings from the environment; bad ones end the process with one line
    naming them, and exit code 2 (no traceback)."""
    try:
        return cls()
    except ValidationError as exc:
        print(f"{service}: invalid settings: {invalid(exc)}", file=sys.stderr)  # noqa: T201
        raise SystemExit(2) from None
