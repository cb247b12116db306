"""An archiver that kills itself (SIGKILL) once a step of its pass is done for the n-th time:
``python -m tests.integration.archive_proc REDIS_URL DIR CUTOFF_MS SEGMENT_EVENTS STEP N``."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from services.core.archive import Archive
from services.core.archiver import archive_log
from services.core.client import connect


async def main(
    url: str, root: str, *, cutoff_ms: int, segment_events: int, step: str, n: int
) -> None:
    seen = 0

    def hook(name: str) -> None:
        nonlocal seen
        if name == step:
            seen += 1
            if seen == n:
                os.kill(os.getpid(), signal.SIGKILL)

    client = connect(url)
    await archive_log(
        client, Archive(Path(root)), cutoff_ms=cutoff_ms, segment_events=segment_events, hook=hook
    )


if __name__ == "__main__":
    url, root, cutoff, segment, step, n = sys.argv[1:]
    asyncio.run(
        main(url, root, cutoff_ms=int(cutoff), segment_events=int(segment), step=step, n=int(n))
    )
    sys.exit(3)  # the step never came: the test names one that does
