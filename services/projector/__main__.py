"""``python -m services.projector``: the projector process (settings from RUNPLANE_*)."""

from __future__ import annotations

import asyncio

from services.core.logs import configure
from services.projector.app import build_app
from services.projector.settings import ProjectorSettings


def main() -> None:
    configure("projector")
    settings = ProjectorSettings()
    asyncio.run(build_app(settings).run())


if __name__ == "__main__":
    main()
