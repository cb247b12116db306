"""``python -m services.api``: the API server process (settings from RUNPLANE_*), served by
uvicorn on ``RUNPLANE_API_HOST``:``RUNPLANE_API_PORT``."""

from __future__ import annotations

from services.core.imports import hide_unused

hide_unused()  # first, before anything imports structlog (services.core.imports)

import uvicorn

from services.api.app import create_app
from services.api.settings import ApiSettings
from services.core.logging import configure
from services.core.settings import load


def main() -> None:
    configure("api")
    settings = load(ApiSettings, "api")
    app = create_app(settings)
    uvicorn.run(
        app,
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,
        access_log=False,
        server_header=False,
    )


if __name__ == "__main__":
    main()
