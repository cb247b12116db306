"""What ``nvidia-smi`` and the ranks' interpreter say about this machine, asked the way an
operator would, independently of ``services.node_agent.hardware``.

Each question runs a subprocess; none raises: a missing ``nvidia-smi`` or ``torch`` is an
answer (the suite skips), not an error.
"""

from __future__ import annotations

import shutil
import subprocess

_TIMEOUT_S = 30


def _nvidia_smi(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["nvidia-smi", *args], capture_output=True, text=True, timeout=_TIMEOUT_S, check=False
    )


def no_gpu_reason() -> str | None:
    """Why this machine cannot run the GPU suite, or None when ``nvidia-smi -L`` lists a GPU."""
    if shutil.which("nvidia-smi") is None:
        return "no NVIDIA GPU: nvidia-smi not found on the PATH"
    try:
        listed = _nvidia_smi("-L")
    except (OSError, subprocess.SubprocessError) as exc:
        return f"no NVIDIA GPU: nvidia-smi -L did not answer ({exc})"
    if listed.returncode != 0:
        said = (listed.stderr or listed.stdout).strip().splitlines()[:1]
        return f"no NVIDIA GPU: nvidia-smi -L exited {listed.returncode} {said}"
    if not gpu_lines(listed.stdout):
        return "no NVIDIA GPU: nvidia-smi -L lists none"
    return None


def nvml_missing_reason() -> str | None:
    """Why NVML (``nvidia-ml-py``, as the node-agent asks it) finds no GPU here, or None."""
    try:
        import pynvml  # noqa: PLC0415 - only where the GPU suite runs
    except ImportError as exc:
        return f"no NVIDIA GPU: nvidia-ml-py is not installed ({exc})"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return f"no NVIDIA GPU: NVML did not start ({exc})"
    try:
        count = pynvml.nvmlDeviceGetCount()
    finally:
        pynvml.nvmlShutdown()
    return None if count else "no NVIDIA GPU: NVML finds none"


def gpu_lines(listing: str) -> list[str]:
    """The ``GPU <i>: <name> (UUID: ...)`` lines of ``nvidia-smi -L`` (MIG devices, indented
    under their GPU, are not GPUs of their own)."""
    return [line for line in listing.splitlines() if line.startswith("GPU ")]


def listed_gpus() -> list[str]:
    """``nvidia-smi -L``: one line per GPU."""
    listed = _nvidia_smi("-L")
    listed.check_returncode()
    return gpu_lines(listed.stdout)


def compute_pids() -> set[int]:
    """The processes that hold a CUDA context on any GPU now."""
    apps = _nvidia_smi("--query-compute-apps=pid", "--format=csv,noheader")
    apps.check_returncode()
    return {int(line) for line in apps.stdout.split() if line.strip().isdigit()}


def torch_missing_reason() -> str | None:
    """Why a rank's ``python3`` (the first on the PATH the stack passes on) cannot use torch
    with CUDA, or None when it can."""
    if shutil.which("python3") is None:
        return "no python3 on the PATH for the ranks"
    probe = "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 3)"
    try:
        done = subprocess.run(
            ["python3", "-c", probe], capture_output=True, text=True, timeout=120, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"python3 -c 'import torch' did not answer ({exc})"
    if done.returncode == 3:
        return "torch is importable by the ranks' python3, but torch.cuda.is_available() is False"
    if done.returncode != 0:
        last = done.stderr.strip().splitlines()[-1:] or ["(no output)"]
        return f"torch is not importable by the ranks' python3: {last[0]}"
    return None
