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

Invariants:
- ``hide_unused()`` is the first statement of every ``services.<name>.__main__``, before
  anything imports structlog (a library that imports a hidden module without a fallback would
  fail there at once, not later).
- A hidden module is one no service code path imports; ``tests/unit/test_imports.py`` starts
  each service's entry in a fresh interpreter and checks what it loaded.
"""

from __future__ import annotations

import sys

UNUSED = ("rich",)
BROKER_UNUSED = ("uvicorn",)


def hide_unused(*also: str) -> None:
    """Make ``import rich`` (every name in ``UNUSED``, and in ``also``) fail in this process, as
    if it were not installed: ``None`` in ``sys.modules`` is the import system's documented
    way."""
    for name in (*UNUSED, *also):
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]
