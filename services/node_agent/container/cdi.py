"""GPUs for containers through CDI (the Container Device Interface), and the node's check at start.

A node whose GPUs are real (``nvidia-smi`` lists them) hands them to containers as CDI devices,
``nvidia.com/gpu=<index>``, described by a spec that the NVIDIA Container Toolkit writes
(``nvidia-ctk cdi generate``) in ``/etc/cdi`` or ``/var/run/cdi``; the engine reads the spec.
So the agent needs that spec before it may take GPU work: without it, it refuses to start and
says what to install. Simulated GPUs (``RUNPLANE_GPUS`` on a machine without any) need no spec:
no device is passed, and CUDA_VISIBLE_DEVICES says which indices a rank holds.

``devices(document)`` is pure; ``find`` reads the spec directories.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import yaml

KIND = "nvidia.com/gpu"
DIRS = (Path("/etc/cdi"), Path("/var/run/cdi"))
INSTALL = (
    "install the NVIDIA Container Toolkit and generate the spec: "
    "`nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml`"
)


class Spec(NamedTuple):
    path: Path
    devices: frozenset[str]  # "0", "1", ..., "GPU-<uuid>", "all"


def devices(document: Any) -> frozenset[str] | None:
    """The device names of a CDI spec of kind ``nvidia.com/gpu``; None for another kind."""
    if not isinstance(document, Mapping) or document.get("kind") != KIND:
        return None
    found = document.get("devices") or []
    return frozenset(
        str(device["name"]) for device in found if isinstance(device, Mapping) and "name" in device
    )


def find(dirs: Iterable[Path] = DIRS) -> Spec | None:
    """The first spec of kind ``nvidia.com/gpu`` in ``dirs`` (``*.yaml``, ``*.yml``,
    ``*.json``), or None."""
    for folder in dirs:
        try:
            paths = sorted(p for p in folder.iterdir() if p.suffix in (".yaml", ".yml", ".json"))
        except OSError:
            continue
        for path in paths:
            try:
                text = path.read_text()
                document = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
            except (OSError, ValueError, yaml.YAMLError):
                continue
            names = devices(document)
            if names is not None:
                return Spec(path, names)
    return None


def problem(real_gpus: int, spec: Spec | None, dirs: Iterable[Path] = DIRS) -> str | None:
    """Why this node cannot run GPU ranks in containers, or None. ``real_gpus``: the GPUs
    ``nvidia-smi`` lists on this machine (0 where GPUs are simulated)."""
    if real_gpus == 0:
        return None
    where = " or ".join(str(d) for d in dirs)
    if spec is None:
        return (
            f"the container executor hands GPUs to containers through CDI, and this node has "
            f"{real_gpus} GPU(s) but no CDI spec of kind {KIND} in {where}: {INSTALL}"
        )
    missing = [str(index) for index in range(real_gpus) if str(index) not in spec.devices]
    if missing:
        return (
            f"the CDI spec {spec.path} names no device {', '.join(missing)} of kind {KIND} "
            f"(a GPU added since it was generated?): {INSTALL}"
        )
    return None
