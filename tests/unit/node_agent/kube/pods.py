"""Recorded Pod objects (``tests/golden/kube``, shaped as ``kubectl get pod -o json`` prints
them) and variations of them."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

GOLDEN = Path(__file__).parents[3] / "golden" / "kube"
CASES = sorted(path.stem for path in GOLDEN.glob("*.json"))


def recorded(case: str) -> dict[str, Any]:
    """A fresh copy of the recorded Pod ``case`` (callers may change it)."""
    pod: dict[str, Any] = json.loads((GOLDEN / f"{case}.json").read_text())
    return copy.deepcopy(pod)


def with_version(pod: dict[str, Any], version: int) -> dict[str, Any]:
    pod["metadata"]["resourceVersion"] = str(version)
    return pod
