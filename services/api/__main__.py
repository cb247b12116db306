"""``python -m services.api``: the API server process (settings from RUNPLANE_*), served by
uvicorn on ``RUNPLANE_API_HOST``:``RUNPLANE_API_PORT``. SIGTERM is a clean stop with exit code
0, as for every service (uvicorn would raise the signal again after its shutdown)."""

from __future__ import annotations

from services.core.imports import hide_unused, lean_arrow

hide_unused()  # first, before anything imports structlog (services.core.imports)
lean_arrow()  # before anything imports pyarrow

import signal
from types import FrameType

import uvicorn

from services.api.app import create_app
from services.api.settings import ApiSettings
from services.core.logging import configure
from services.core.settings import load


class _Server(uvicorn.Server):
    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM:
            self.should_exit = True  # a stop asked for: shut down and exit 0
        else:
            super().handle_exit(sig, frame)


def main() -> None:
    configure("api")
    settings = load(ApiSettings, "api")
    config = uvicorn.Config(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,
        access_log=False,
        server_header=False,
        ws_max_size=settings.api_max_body_bytes,
    )
    _Server(config).run()


if __name__ == "__main__":
    main()
