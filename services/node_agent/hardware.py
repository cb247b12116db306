"""What a node has: its GPUs as ``nvidia-smi`` reports them, named the way runs ask for them.

``gpu_type_of`` is pure; ``detect_gpus`` runs ``nvidia-smi`` when it is on the PATH.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import NamedTuple

#: Models recognised in an NVIDIA product name, longest first so "a100" wins over "a10".
_MODELS = ("gh200", "h200", "h100", "a100", "a10g", "a800", "h800", "l40s", "l40", "a40")
_MODELS_SHORT = ("v100", "a10", "t4", "l4", "p100", "k80", "a30", "a6000")
_QUERY = ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"]


class Gpus(NamedTuple):
    gpus: int
    gpu_type: str | None


def gpu_type_of(name: str, memory_mib: int | None) -> str:
    """``a100_80gb`` for "NVIDIA A100-SXM4-80GB" with 81920 MiB; the lower-cased name, with
    ``_`` for anything but letters and digits, for a model it does not know."""
    lowered = name.lower()
    for model in (*_MODELS, *_MODELS_SHORT):
        if re.search(rf"(?<![a-z0-9]){model}(?![a-z0-9])", lowered):
            if memory_mib is None:
                return model
            return f"{model}_{round(memory_mib / 1024)}gb"
    return re.sub(r"[^a-z0-9]+", "_", lowered.removeprefix("nvidia")).strip("_") or "gpu"


def parse_nvidia_smi(output: str) -> Gpus:
    """The GPUs listed by ``nvidia-smi --query-gpu=name,memory.total --format=csv,...``."""
    rows = [line.rsplit(",", 1) for line in output.splitlines() if line.strip()]
    if not rows:
        return Gpus(0, None)
    first = rows[0]
    memory = first[1].strip() if len(first) > 1 else ""
    return Gpus(len(rows), gpu_type_of(first[0].strip(), int(memory) if memory.isdigit() else None))


def detect_gpus() -> Gpus:
    """The GPUs of this machine; none when ``nvidia-smi`` is missing or fails."""
    if shutil.which("nvidia-smi") is None:
        return Gpus(0, None)
    try:
        result = subprocess.run(_QUERY, capture_output=True, text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return Gpus(0, None)
    return parse_nvidia_smi(result.stdout)
