"""What a service process leaves out of its imports: libraries it has installed but never uses.

structlog imports rich (and, through it, pygments and attrs) whenever rich is installed, only
to draw tracebacks on a console; a service writes JSON lines (``services.core.logging``) and
never draws one, yet would hold about 4.5 MiB of memory for them in every process. The CLI,
installed from the same package, needs rich for its tables, so rich is hidden from the service
processes only.

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


def hide_unused() -> None:
    """Make ``import rich`` (and every name in ``UNUSED``) fail in this process, as if it were
    not installed: ``None`` in ``sys.modules`` is the import system's documented way."""
    for name in UNUSED:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]
