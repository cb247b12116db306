"""The fit rules: the shape of a request over a cluster's nodes, or why it can never fit.

Pure: no IO. A request is ``compute.gpus`` over ``compute.nodes``; every rank gets
``gpus / nodes`` GPUs on a node of its own, all nodes of one ``gpu_type``, all ranks or none
(gang). With ``nodes`` omitted a request larger than one node spans whole nodes (16 GPUs on
8-GPU nodes is 2 ranks of 8, as MAPI does). ``gpus == 0`` is a CPU-only rank on any node.

Invariant: ``shapes`` judges a request against the cluster's *registered* nodes (lost or
drained ones included: they may come back): a request that no registered node could ever hold
is refused permanently; a cluster without nodes is only a reason to wait. The scheduler places
by these rules (``services.scheduler.placement``) and a submit is refused by them, so both
say the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from events.spec import Compute


class Shape(NamedTuple):
    ranks: int
    per_rank: int
    gpu_type: str | None  # None only for CPU-only ranks that may go to any node


class Refusal(NamedTuple):
    """Why a request is not placed: ``permanent`` when it can never fit the cluster."""

    permanent: bool
    message: str


def label(gpus: int, gpu_type: str | None) -> str:
    return f"{gpus} x {gpu_type}" if gpu_type else f"{gpus} GPUs"


def shapes(compute: Compute, sizes: Mapping[str | None, int]) -> list[Shape] | Refusal:
    """The layouts of ``compute`` over a cluster whose registered nodes of each gpu_type hold
    at most ``sizes[gpu_type]`` GPUs; one per gpu_type that could hold it."""
    if (refusal := _refusal(compute, sizes)) is not None:
        return refusal
    cluster, gpus, nodes, wanted = compute.cluster, compute.gpus, compute.nodes, compute.gpu_type
    if gpus == 0:
        return [Shape(nodes or 1, 0, wanted)]
    types = [wanted] if wanted is not None else sorted(t for t in sizes if t and sizes[t] > 0)
    found: list[Shape] = []
    why: list[str] = []
    for gpu_type in types:
        shape = _layout(compute, gpu_type, sizes[gpu_type])
        if isinstance(shape, str):
            why.append(shape)
        else:
            found.append(shape)
    if not found:
        return Refusal(True, "; ".join(why) or f"No node in cluster {cluster} has GPUs")
    return found


def _refusal(compute: Compute, sizes: Mapping[str | None, int]) -> Refusal | None:
    cluster, gpus, nodes, wanted = compute.cluster, compute.gpus, compute.nodes, compute.gpu_type
    if gpus < 0 or (nodes is not None and nodes < 1):
        return Refusal(True, f"{gpus} GPUs over {nodes} nodes is not a request")
    if not sizes:
        return Refusal(False, f"Waiting for nodes in cluster {cluster}")
    if wanted is not None and wanted not in sizes:
        known = ", ".join(sorted(str(t) for t in sizes))
        return Refusal(True, f"No node in cluster {cluster} has gpu_type {wanted} (it has {known})")
    if nodes is not None and gpus % nodes:
        return Refusal(True, f"{gpus} GPUs do not divide evenly over {nodes} nodes")
    return None


def _layout(compute: Compute, gpu_type: str | None, size: int) -> Shape | str:
    """The shape of ``compute`` on nodes of ``gpu_type`` holding at most ``size`` GPUs, or why
    it can never fit them."""
    gpus, nodes = compute.gpus, compute.nodes
    if nodes is not None:
        shape = Shape(nodes, gpus // nodes, gpu_type)
    elif gpus <= size:
        shape = Shape(1, gpus, gpu_type)
    elif gpus % size == 0:
        shape = Shape(gpus // size, size, gpu_type)
    else:
        return (
            f"{gpus} GPUs do not fill whole {size}-GPU nodes of {gpu_type}: ask for a "
            f"multiple of {size}, or set compute.nodes"
        )
    if shape.per_rank > size:
        return (
            f"No node in cluster {compute.cluster} has {label(shape.per_rank, gpu_type)} "
            f"(the largest has {size})"
        )
    return shape


def nodes(count: int) -> str:
    return "1 node" if count == 1 else f"{count} nodes"
