"""Settings of every runplane process, from ``RUNPLANE_*`` environment variables.

Read once at a process edge and passed down; pure code never reads the environment.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RUNPLANE_", extra="ignore")

    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0", description="The Redis or Valkey server of the log."
    )
    partitions: int = Field(default=1, ge=1, description="Partitions of the global log.")
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
