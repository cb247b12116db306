"""What a service process leaves out of its imports: libraries it has installed but never uses.

structlog imports rich (and, through it, pygments and attrs) whenever rich is installed, only
to draw tracebacks on a console; a service writes JSON lines (``services.core.logging``) and
never draws one, yet would hold about 4.5 MiB of memory for them in every process. The CLI,
installed from the same package, needs rich for its tables, so rich is hidden from the service
processes only.

FastStream imports uvicorn (and through it click, multiprocessing, http and email) whenever it
is installed, only to serve its own ASGI app, which no runplane service runs: about 2 MiB in
each service on a broker. The API server serves with uvicorn, so only the services on
FastStream hide it (``BROKER_UNUSED``).

Arrow (the archive's Parquet, read and written by the projector, the API server and the
log-collector) allocates from mimalloc unless told otherwise, and mimalloc keeps what a thread
freed for that thread: the projector's RSS rose over a soak as its cooler merged segments
(``bench.soak``, 1,000,000 events: 191 MiB at the end, rising; 169 MiB with the system's
allocator; 149 MiB, flat, with jemalloc, which gives back what it freed within a second).
``lean_arrow()`` chooses jemalloc where Arrow's wheels have it (Linux on x86-64; not on ARM,
apache/arrow#44342) and the system's allocator elsewhere, through Arrow's own setting, so a
process that never opens the archive still never imports pyarrow. An operator's
``ARROW_DEFAULT_MEMORY_POOL`` wins.

Invariants:
- ``hide_unused()`` is the first statement of every ``services.<name>.__main__``, before
  anything imports structlog (a library that imports a hidden module without a fallback would
  fail there at once, not later).
- ``lean_arrow()`` comes before anything imports pyarrow (Arrow reads its setting once, at
  its first allocation) in every service that reads or writes the archive.
- A hidden module is one no service code path imports; ``tests/unit/test_imports.py`` starts
  each service's entry in a fresh interpreter and checks what it loaded.
"""

from __future__ import annotations

import os
import platform
import sys

UNUSED = ("rich",)
BROKER_UNUSED = ("uvicorn",)


def hide_unused(*also: str) -> None:
    """Make ``import rich`` (every name in ``UNUSED``, and in ``also``) fail in this process, as
    if it were not installed: ``None`` in ``sys.modules`` is the import system's documented
    way."""
    for name in (*UNUSED, *also):
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]


def lean_arrow() -> None:
    """Arrow's allocator for this process: one that gives memory back (see above)."""
    jemalloc = sys.platform == "linux" and platform.machine() == "x86_64"
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "jemalloc" if jemalloc else "system")
