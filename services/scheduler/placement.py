"""Where a request's shape (``events.fit``) is placed now, and why it waits if it is not.

Pure: no IO.

Invariants:
- ``place`` takes GPUs only from a ``Capacity`` (the free GPUs of usable nodes) and returns
  distinct nodes with distinct, free GPU indices; it never half-places.
- Best fit: the node with the fewest free GPUs that still holds a rank is chosen first, so large
  holes stay open for large requests and CPU-only ranks go to full nodes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from events.fit import InstanceType, Shape, holds, label, nodes

Placement = list[tuple[str, list[int]]]  # (node, GPU indices) per rank, in rank order


class Capacity:
    """Free GPUs of one cluster's usable nodes, bucketed by (gpu_type, free count).

    A scratch copy for one queue pass: ``take`` what a placement uses, ``give`` what is about
    to be released. Free lists keep their order: given GPUs go last, so a placement prefers
    GPUs that are free now.
    """

    def __init__(self) -> None:
        self.free: dict[str, list[int]] = {}
        self.size: dict[str, int] = {}
        self.type_of: dict[str, str | None] = {}
        self.buckets: dict[str | None, dict[int, dict[str, None]]] = {}
        self.kinds: Counter[InstanceType] = Counter()  # the nodes of each instance type

    def add_node(self, name: str, gpu_type: str | None, size: int, free: Iterable[int]) -> None:
        self.free[name] = list(free)
        self.size[name] = size
        self.type_of[name] = gpu_type
        self.kinds[InstanceType(gpu_type, size)] += 1
        self._file(name)

    def copy(self) -> Capacity:
        other = Capacity()
        other.free = {name: list(gpus) for name, gpus in self.free.items()}
        other.size = dict(self.size)
        other.type_of = dict(self.type_of)
        other.kinds = self.kinds.copy()
        other.buckets = {
            t: {n: dict(nodes) for n, nodes in by_count.items()}
            for t, by_count in self.buckets.items()
        }
        return other

    def take(self, node: str, gpus: Iterable[int]) -> None:
        if node not in self.free:
            return
        self._unfile(node)
        gone = set(gpus)
        self.free[node] = [gpu for gpu in self.free[node] if gpu not in gone]
        self._file(node)

    def give(self, node: str, gpus: Iterable[int]) -> None:
        if node not in self.free:
            return  # not a usable node: nothing released there can be placed on
        self._unfile(node)
        have = self.free[node]
        have += [gpu for gpu in gpus if gpu not in have]
        self._file(node)

    def total_free(self, gpu_type: str | None) -> int:
        return sum(count * len(nodes) for count, nodes in self.buckets.get(gpu_type, {}).items())

    def nodes_holding(self, shape: Shape) -> int:
        """Usable nodes that could take a rank of ``shape``, whatever they hold now."""
        return sum(count for kind, count in self.kinds.items() if holds(shape, kind))

    def _file(self, node: str) -> None:
        by_count = self.buckets.setdefault(self.type_of[node], {})
        by_count.setdefault(len(self.free[node]), {})[node] = None

    def _unfile(self, node: str) -> None:
        by_count = self.buckets[self.type_of[node]]
        count = len(self.free[node])
        del by_count[count][node]
        if not by_count[count]:
            del by_count[count]


def place(shape: Shape, capacity: Capacity) -> Placement | None:
    """``shape.ranks`` distinct nodes with ``shape.per_rank`` free GPUs each, or None."""
    if shape.gpu_type is None:
        tables = list(capacity.buckets.values())
    else:
        tables = [capacity.buckets.get(shape.gpu_type, {})]
    counts = sorted({count for table in tables for count in table if count >= shape.per_rank})
    chosen: list[str] = []
    for count in counts:
        for table in tables:
            for node in table.get(count, ()):
                if shape.node_gpus is not None and capacity.size[node] != shape.node_gpus:
                    continue
                chosen.append(node)
                if len(chosen) == shape.ranks:
                    return [(name, capacity.free[name][: shape.per_rank]) for name in chosen]
    return None


def why_waiting(shape: Shape, capacity: Capacity, cordoned: int = 0) -> str:
    """The reason a user reads for a shape that does not fit ``capacity`` now; ``cordoned``:
    the nodes that an admin cordoned or drains that a placement now would need."""
    k, per, gpu_type = shape.ranks, shape.per_rank, shape.gpu_type
    if cordoned:
        return (
            f"Waiting for cordoned nodes: needs {nodes(k)} with {label(per, gpu_type)}, "
            f"free now only with {nodes(cordoned)} that an admin cordoned or drains"
        )
    holding = capacity.nodes_holding(shape)
    if holding < k:  # the cluster's registered nodes could hold it (``events.fit``): some are down
        return (
            f"Waiting for nodes: needs {nodes(k)} with {label(per, gpu_type)}, {holding} up "
            f"(the others are down)"
        )
    free = capacity.total_free(gpu_type)
    if free < k * per:
        return f"Insufficient resources: needs {k * per} GPUs, {free} free"
    return (
        f"Insufficient resources: needs {nodes(k)} with {per} free GPUs each, "
        f"{free} GPUs free in total"
    )
