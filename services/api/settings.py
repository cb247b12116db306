"""The API server's settings (``RUNPLANE_*``), on top of every process's."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from services.core.settings import KeyringSettings

#: The WebSocket subprotocols served (``services.api.websocket``).
WS_PROTOCOLS = ("graphql-transport-ws", "graphql-ws")


class ApiSettings(KeyringSettings):
    api_host: str = Field(default="127.0.0.1", description="Address the API server listens on.")
    api_port: int = Field(default=8765, ge=0, le=65535, description="Its port (0: any free one).")
    api_max_body_bytes: int = Field(
        default=1 << 20,
        ge=1024,
        description="A request body (or a WebSocket message) over this is refused.",
    )
    api_max_metadata_bytes: int = Field(
        default=256 * 1024,
        ge=1024,
        description="A run's metadata, as JSON, at most: a submission or a metadata update that"
        " would make it larger is refused (413).",
    )
    api_max_fields: int = Field(
        default=500, ge=100, description="Fields one request may resolve (fragments expanded)."
    )
    api_default_limit: int = Field(
        default=100, ge=1, description="Runs per page when a listing asks for no limit."
    )
    api_max_limit: int = Field(default=1000, ge=1, description="Runs per page at most.")
    api_max_streams: int = Field(
        default=1000,
        ge=1,
        description="Subscriptions (log follows, status watches) served at once; each holds one "
        "connection to the server of its own, apart from the requests'.",
    )
    api_ws_protocols: str = Field(
        default=",".join(WS_PROTOCOLS),
        description="WebSocket subprotocols served, the preferred first (comma-separated).",
    )
    api_log_chunk_bytes: int = Field(
        default=512 * 1024,
        ge=1,
        le=700 * 1024,
        description="Raw output bytes per getRunLogsV2 message (base64 adds a third; the client"
        " takes 1 MiB frames).",
    )
    api_follow_block_ms: int = Field(
        default=1000,
        ge=10,
        description="How long one wait for new output or run events blocks before looking again.",
    )
    api_console_session_seconds: int = Field(
        default=12 * 3600,
        ge=60,
        description="How long a web console sign-in lasts: its session key expires then.",
    )
    archive_dir: Path | None = Field(
        default=None,
        description="The log-collector's archive, where this host can read it (else archived"
        " output is asked of a log-collector).",
    )

    @field_validator("api_ws_protocols")
    @classmethod
    def _known_protocols(cls, value: str) -> str:
        named = [p.strip() for p in value.split(",") if p.strip()]
        unknown = [p for p in named if p not in WS_PROTOCOLS]
        if not named or unknown:
            raise ValueError(f"name one or more of {', '.join(WS_PROTOCOLS)} (got {value!r})")
        return ",".join(named)

    @property
    def ws_protocols(self) -> list[str]:
        """``api_ws_protocols`` in preference order."""
        return self.api_ws_protocols.split(",")
