"""The API server's settings (``RUNPLANE_*``), on top of every process's."""

from __future__ import annotations

from pydantic import Field

from services.core.settings import Settings


class ApiSettings(Settings):
    api_host: str = Field(default="127.0.0.1", description="Address the API server listens on.")
    api_port: int = Field(default=8765, ge=0, le=65535, description="Its port (0: any free one).")
    api_max_body_bytes: int = Field(
        default=1 << 20, ge=1024, description="A request body over this is refused (413)."
    )
    api_max_fields: int = Field(
        default=500, ge=100, description="Fields one request may resolve (fragments expanded)."
    )
    api_default_limit: int = Field(
        default=100, ge=1, description="Runs per page when a listing asks for no limit."
    )
    api_max_limit: int = Field(default=1000, ge=1, description="Runs per page at most.")
