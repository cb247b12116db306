"""Settings of every runplane process, from ``RUNPLANE_*`` environment variables.

Read once at a process edge and passed down; pure code never reads the environment.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NamedTuple, Self, TypeVar
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from events import keys
from services.core.passwords import PasswordFileError, read_password

S = TypeVar("S", bound="Settings")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RUNPLANE_", extra="ignore")

    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description="The Redis or Valkey server of the log. It may carry a user and password "
        "(`redis://user:password@host:6379/0`), but then they are in the environment; "
        "RUNPLANE_REDIS_USERNAME and RUNPLANE_REDIS_PASSWORD_FILE keep the password out of it.",
    )
    redis_username: str | None = Field(
        default=None,
        description="The server's ACL user this process logs in as (the local stack gives each "
        "service its own: `services/core/acl.py`); with RUNPLANE_REDIS_PASSWORD_FILE.",
    )
    redis_password_file: Path | None = Field(
        default=None,
        description="A file (mode 0600) holding the password of RUNPLANE_REDIS_USERNAME (its first "
        "line); read when connecting, so no environment or command line shows the password.",
    )
    redis_cluster: bool = Field(
        default=False,
        description="RUNPLANE_REDIS_URL names one node of a Valkey (or Redis) Cluster: the "
        "processes discover the others and follow failovers and slot moves "
        "(`mcli dev up --shards N`; docs/scale.md).",
    )
    append_replicas: int = Field(
        default=0,
        ge=0,
        description="Replicas that must hold an append before it is acknowledged (WAIT): with "
        "1, a primary killed at any moment loses no acknowledged event once its replica takes "
        "over. 0: the primary's own AOF (fsync'd) acknowledges it.",
    )
    append_replica_timeout_ms: int = Field(
        default=2000,
        ge=10,
        description="How long one append waits for RUNPLANE_APPEND_REPLICAS replicas before it "
        "is retried (with its idempotency key: stored once) until the store counts as away.",
    )
    partitions: int = Field(
        default=1,
        ge=1,
        le=keys.MAX_PARTITIONS,
        description="Partitions of the global log (docs/scale.md): on a Valkey Cluster they "
        "spread over its shards. Never change it for an existing log: a run's partition is a "
        "hash of its id modulo this number, and the services refuse to start on a log created "
        "with another.",
    )
    idempotency_ttl_s: int = Field(
        default=7 * 24 * 3600, ge=60, description="How long a retried append is recognised."
    )
    inbox_max_len: int = Field(
        default=100_000,
        ge=1000,
        description="A node's inbox (one per partition: the events of the runs placed on it) "
        "keeps about this many entries; an agent further behind than that recovers its runs "
        "from their histories (docs/scale.md).",
    )
    claim_idle_ms: int = Field(
        default=30_000,
        ge=100,
        description="A pending entry idle this long is claimed from its (presumed dead) consumer.",
    )
    max_deliveries: int = Field(
        default=5, ge=1, description="Deliveries of one entry before it goes to the dead letters."
    )
    metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="Serve the process's Prometheus metrics at http://HOST:PORT/metrics (a "
        "node-agent's include DCGM_FI_DEV_GPU_UTIL, DCGM_FI_DEV_FB_USED and "
        "DCGM_FI_DEV_POWER_USAGE per GPU); unset, none.",
    )
    metrics_host: str = Field(
        default="127.0.0.1",
        min_length=1,
        description="The address metrics_port listens on (0.0.0.0: every interface).",
    )

    @model_validator(mode="after")
    def _one_password(self) -> Self:
        if self.redis_password_file is not None and urlsplit(self.redis_url).password:
            raise ValueError(
                "RUNPLANE_REDIS_URL carries a password and RUNPLANE_REDIS_PASSWORD_FILE names "
                "another: give one of them"
            )
        return self

    def redis_auth(self) -> Auth | None:
        """The user and password to log in with, the password read from its file now; None
        when no file is set (the URL's own user and password, if any, are used)."""
        if self.redis_password_file is None:
            return None
        return Auth(self.redis_username, read_password(self.redis_password_file))

    def redis_env(self) -> dict[str, str]:
        """The variables that give a child process this process's server, its log's partitions
        and login (the password's file, never the password)."""
        env = {"RUNPLANE_REDIS_URL": self.redis_url, "RUNPLANE_PARTITIONS": str(self.partitions)}
        if self.redis_cluster:
            env["RUNPLANE_REDIS_CLUSTER"] = "true"
        if self.redis_username is not None:
            env["RUNPLANE_REDIS_USERNAME"] = self.redis_username
        if self.redis_password_file is not None:
            env["RUNPLANE_REDIS_PASSWORD_FILE"] = str(self.redis_password_file)
        return env


class KeyringSettings(Settings):
    """The settings of a process that seals or opens users' secrets: the API server and the
    node-agents, and no other (``services.core.sealing``)."""

    secrets_keyring_file: Path | None = Field(
        default=None,
        description="The keyring (mode 0600) that seals users' secrets at rest: given to the API "
        "server and the node-agents only (`mcli dev up` draws one in its secrets/). Unset, the "
        "API refuses to create secrets and a node fails the ranks of a user who has some.",
    )


class Auth(NamedTuple):
    """A login on the server: ``username`` None is the ``default`` user."""

    username: str | None
    password: str

    def __repr__(self) -> str:  # never the password, wherever an Auth is printed
        return f"Auth(username={self.username!r}, password='***')"


def login(auth: Auth | None) -> dict[str, str]:
    """redis-py's keyword arguments for ``auth`` (none without it: the URL's own login)."""
    if auth is None:
        return {}
    return {"password": auth.password} | ({"username": auth.username} if auth.username else {})


def invalid(exc: ValidationError) -> str:
    """One line naming every bad ``RUNPLANE_*`` variable and what is wrong with it."""
    return "; ".join(
        (
            f"RUNPLANE_{'_'.join(str(part) for part in error['loc']).upper()}: "
            if error["loc"]
            else ""
        )
        + error["msg"].removeprefix("Value error, ")
        for error in exc.errors()
    )


def load(cls: type[S], service: str) -> S:
    """A service's settings from the environment; bad ones end the process with one line
    naming them, and exit code 2 (no traceback)."""
    try:
        settings = cls()
        settings.redis_auth()  # a password file that cannot be read ends the process here
    except ValidationError as exc:
        print(f"{service}: invalid settings: {invalid(exc)}", file=sys.stderr)  # noqa: T201
        raise SystemExit(2) from None
    except PasswordFileError as exc:
        print(f"{service}: RUNPLANE_REDIS_PASSWORD_FILE: {exc}", file=sys.stderr)  # noqa: T201
        raise SystemExit(2) from None
    return settings
