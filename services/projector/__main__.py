"""``python -m services.projector``: the projector process (settings from RUNPLANE_*)."""

from __future__ import annotations

from services.core.imports import hide_unused, lean_arrow

hide_unused()  # first, before anything imports structlog (services.core.imports)
lean_arrow()  # before anything imports pyarrow

import asyncio

from services.core.health import run_alive
from services.core.logging import configure
from services.core.settings import load
from services.projector.app import run
from services.projector.settings import ProjectorSettings


def main() -> None:
    configure("projector")
    settings = load(ProjectorSettings, "projector")
    asyncio.run(run_alive(run(settings), settings, service="projector"))


if __name__ == "__main__":
    main()
