"""The fit rules: the shape of a request over a cluster's nodes, or why it can never fit.

Pure: no IO. A request is ``compute.gpus`` over ``compute.nodes``; every rank gets
``gpus / nodes`` GPUs on a node of its own, all nodes of one ``gpu_type``, all ranks or none
(gang). With ``nodes`` omitted a request larger than one node spans whole nodes (16 GPUs on
8-GPU nodes is 2 ranks of 8, as MAPI does). ``gpus == 0`` is a CPU-only rank on any node.
``compute.instance`` (an instance type as ``mcli util`` names it, ``a100_80gbx8``) keeps the
ranks to nodes of that type.

Invariant: ``shapes`` judges a request against the cluster's *registered* nodes, counted per
instance type (lost or drained ones included: they may come back): a request that no set of
registered nodes could ever hold (too few nodes, too small ones, another gpu_type, an unknown
instance, an uneven split) is refused permanently; a cluster without nodes is only a reason
to wait, and so is a request that registered nodes could hold but some of them are down now
(``services.scheduler.placement.why_waiting`` says so). The scheduler places by these rules
(``services.scheduler.queue``) and a submit is refused by them (``services.api.runs``), both
from one ``Fleet``, so both say the same.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from events.spec import Compute


class InstanceType(NamedTuple):
    """Nodes of one ``gpu_type`` (None: no GPUs) with ``gpus`` GPUs each."""

    gpu_type: str | None
    gpus: int

    @property
    def name(self) -> str:
        """mcli's INSTANCE_NAME: ``a100_80gbx8``, ``cpux0``."""
        return f"{self.gpu_type or 'cpu'}x{self.gpus}"


#: A cluster's registered nodes, counted per instance type: what the fit rules judge by.
Fleet = Mapping[InstanceType, int]


def fleet(nodes: Iterable[tuple[str | None, int]]) -> Fleet:
    """The fleet of registered nodes given as (gpu_type, GPUs) each."""
    return Counter(InstanceType(gpu_type, gpus) for gpu_type, gpus in nodes)


class Shape(NamedTuple):
    ranks: int
    per_rank: int
    gpu_type: str | None  # None only for CPU-only ranks that may go to any node
    node_gpus: int | None = None  # only on nodes with this many GPUs (an instance asked for)


class Refusal(NamedTuple):
    """Why a request is not placed: ``permanent`` when it can never fit the cluster."""

    permanent: bool
    message: str


def label(gpus: int, gpu_type: str | None) -> str:
    return f"{gpus} x {gpu_type}" if gpu_type else f"{gpus} GPUs"


def nodes(count: int) -> str:
    return "1 node" if count == 1 else f"{count} nodes"


def shapes(compute: Compute, cluster: Fleet) -> list[Shape] | Refusal:
    """The layouts of ``compute`` over ``cluster`` (its registered nodes); one per gpu_type
    that could hold it, or why none ever could."""
    cluster = {kind: count for kind, count in cluster.items() if count > 0}
    if (refusal := _refusal(compute, cluster)) is not None:
        return refusal
    chosen = _instance(compute, cluster)
    pool = {kind: n for kind, n in cluster.items() if chosen is None or kind == chosen}
    node_gpus = chosen.gpus if chosen is not None else None
    if compute.gpus == 0:
        wanted = chosen.gpu_type if chosen is not None else compute.gpu_type
        shape = Shape(compute.nodes or 1, 0, wanted, node_gpus)
        short = _short(compute, shape, pool)
        return [shape] if short is None else Refusal(True, short)
    types = sorted({kind.gpu_type for kind in pool if kind.gpu_type and kind.gpus > 0})
    found: list[Shape] = []
    why: list[str] = []
    for gpu_type in [compute.gpu_type] if compute.gpu_type is not None else types:
        largest = max(kind.gpus for kind in pool if kind.gpu_type == gpu_type)
        layout = _layout(compute, gpu_type, largest, node_gpus)
        short = layout if isinstance(layout, str) else _short(compute, layout, pool)
        if short is not None:
            why.append(short)
        elif isinstance(layout, Shape):
            found.append(layout)
    if not found:
        return Refusal(True, "; ".join(why) or f"No node in cluster {compute.cluster} has GPUs")
    return found


def holds(shape: Shape, kind: InstanceType) -> bool:
    """Whether a node of ``kind`` can take one rank of ``shape``."""
    return (
        kind.gpus >= shape.per_rank
        and shape.gpu_type in (None, kind.gpu_type)
        and shape.node_gpus in (None, kind.gpus)
    )


def _short(compute: Compute, shape: Shape, pool: Fleet) -> str | None:
    """None if the cluster has nodes enough for ``shape``, else why not."""
    have = sum(count for kind, count in pool.items() if holds(shape, kind))
    if have >= shape.ranks:
        return None
    return (
        f"No set of nodes in cluster {compute.cluster} can hold it (it needs "
        f"{nodes(shape.ranks)} with {label(shape.per_rank, shape.gpu_type)}, the cluster has "
        f"{have})"
    )


def _refusal(compute: Compute, cluster: Fleet) -> Refusal | None:
    name, gpus, count, wanted = compute.cluster, compute.gpus, compute.nodes, compute.gpu_type
    if gpus < 0 or (count is not None and count < 1):
        return Refusal(True, f"{gpus} GPUs over {count} nodes is not a request")
    if not any(cluster.values()):
        return Refusal(False, f"Waiting for nodes in cluster {name}")
    types = {kind.gpu_type for kind in cluster}
    if wanted is not None and wanted not in types:
        known = ", ".join(sorted(str(t) for t in types))
        return Refusal(True, f"No node in cluster {name} has gpu_type {wanted} (it has {known})")
    if compute.instance is not None and (why := _instance_refusal(compute, cluster)):
        return Refusal(True, why)
    if count is not None and gpus % count:
        return Refusal(True, f"{gpus} GPUs do not divide evenly over {count} nodes")
    return None


def _instance(compute: Compute, cluster: Fleet) -> InstanceType | None:
    return next((kind for kind in cluster if kind.name == compute.instance), None)


def _instance_refusal(compute: Compute, cluster: Fleet) -> str | None:
    instance = _instance(compute, cluster)
    if instance is None:
        known = ", ".join(sorted(kind.name for kind in cluster))
        return (
            f"Instance {compute.instance} not found in cluster {compute.cluster}; "
            f"known instances: {known}"
        )
    if compute.gpu_type not in (None, instance.gpu_type):
        return f"Instance {instance.name} has gpu_type {instance.gpu_type}, not {compute.gpu_type}"
    return None


def _layout(
    compute: Compute, gpu_type: str | None, size: int, node_gpus: int | None
) -> Shape | str:
    """The shape of ``compute`` on nodes of ``gpu_type`` holding at most ``size`` GPUs, or why
    it can never fit them."""
    gpus, count = compute.gpus, compute.nodes
    if size == 0:
        return f"No node in cluster {compute.cluster} of gpu_type {gpu_type} has GPUs"
    if count is not None:
        shape = Shape(count, gpus // count, gpu_type, node_gpus)
    elif gpus <= size:
        shape = Shape(1, gpus, gpu_type, node_gpus)
    elif gpus % size == 0:
        shape = Shape(gpus // size, size, gpu_type, node_gpus)
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


def unknown_cluster(name: str, known: Iterable[str]) -> str:
    """What to say of a cluster with no registered nodes: the ones there are."""
    names = sorted(known)
    listed = ", ".join(names) if names else "none (start nodes with `mcli dev up`)"
    return f"Cluster {name} not found; known clusters: {listed}"
