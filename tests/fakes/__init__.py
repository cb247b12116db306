"""Fakes at the library boundary: modules that stand in for a hardware library in tests.

``tests/fakes`` goes first on a process's ``PYTHONPATH`` (``PATH_ENTRY``), so ``import pynvml``
finds ``tests/fakes/pynvml`` and everything above NVML runs as it would on a GPU node.
"""

from __future__ import annotations

from pathlib import Path

PATH_ENTRY = str(Path(__file__).parent)
