"""Where a request's shape (``events.fit``) is placed now, and why it waits if it is not.

Pure: no IO.

Invariants:
- ``place`` takes GPUs only from a ``Capacity`` (the free GPUs of usable nodes) or a
  ``Scratch`` view of one, and returns distinct nodes with distinct, free GPU indices; it never
  half-places.
- Inside ``Capacity.trial`` every change is journaled once per node and undone at its end:
  a queue pass places on the cluster's kept capacity directly and leaves it as it found it
  (the same nodes, free GPUs and buckets; ties within a bucket may come back in another
  order), at a cost of the nodes it touched.
- A ``Scratch`` never writes its base: what it gives or adds lives in its own copies of the
  nodes it touched; the rest it reads from the base, live.
- Best fit: the node with the fewest free GPUs that still holds a rank is chosen first, so large
  holes stay open for large requests and CPU-only ranks go to full nodes.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterable, Iterator

from events.fit import InstanceType, Shape, holds, label, nodes

Placement = list[tuple[str, list[int]]]  # (node, GPU indices) per rank, in rank order


class Capacity:
    """Free GPUs of one cluster's usable nodes, bucketed by (gpu_type, free count).

    ``ClusterState`` keeps one per cluster, changed node by node as the log moves it; a queue
    pass takes from it inside a ``trial``, which undoes what the pass did. ``take`` what a
    placement uses, ``give`` what is about to be released. Free lists keep their order: given
    GPUs go last, so a placement prefers GPUs that are free now. Within a bucket, nodes come in
    the order they came to that count.
    """

    def __init__(self) -> None:
        self.free: dict[str, list[int]] = {}
        self.size: dict[str, int] = {}
        self.type_of: dict[str, str | None] = {}
        self.buckets: dict[str | None, dict[int, dict[str, None]]] = {}
        self.kinds: Counter[InstanceType] = Counter()  # the nodes of each instance type
        #: Inside a trial: node -> what it was before the trial first changed it (None: absent).
        self._undo: dict[str, tuple[str | None, int, list[int]] | None] | None = None

    @contextlib.contextmanager
    def trial(self) -> Iterator[Capacity]:
        """Every change made inside is undone at its end, at a cost of the nodes changed. The
        state does not refresh it meanwhile (a pass applies nothing: the edge applies its
        events after deciding)."""
        self._undo = {}
        try:
            yield self
        finally:
            undo, self._undo = self._undo, None
            for name, before in undo.items():
                if name in self.free:
                    self.remove_node(name)
                if before is not None:
                    self.add_node(name, *before)

    def _journal(self, name: str) -> None:
        if self._undo is not None and name not in self._undo:
            known = name in self.free
            self._undo[name] = (
                (self.type_of[name], self.size[name], list(self.free[name])) if known else None
            )

    def add_node(self, name: str, gpu_type: str | None, size: int, free: Iterable[int]) -> None:
        self._journal(name)
        self.free[name] = list(free)
        self.size[name] = size
        self.type_of[name] = gpu_type
        self.kinds[InstanceType(gpu_type, size)] += 1
        self._file(name)

    def remove_node(self, name: str) -> None:
        self._journal(name)
        self._unfile(name)
        kind = self.instance_of(name)
        self.kinds[kind] -= 1
        if not self.kinds[kind]:
            del self.kinds[kind]
        del self.free[name], self.size[name], self.type_of[name]

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
        self._journal(node)
        self._unfile(node)
        gone = set(gpus)
        self.free[node] = [gpu for gpu in self.free[node] if gpu not in gone]
        self._file(node)

    def give(self, node: str, gpus: Iterable[int]) -> None:
        if node not in self.free:
            return  # not a usable node: nothing released there can be placed on
        self._journal(node)
        self._unfile(node)
        have = self.free[node]
        have += [gpu for gpu in gpus if gpu not in have]
        self._file(node)

    # --- reading (``Scratch`` reads the same way) ---------------------------------------

    def has(self, node: str) -> bool:
        return node in self.free

    def free_of(self, node: str) -> list[int]:
        return self.free[node]

    def instance_of(self, node: str) -> InstanceType:
        return InstanceType(self.type_of[node], self.size[node])

    def types(self) -> list[str | None]:
        return list(self.buckets)

    def counts(self, gpu_type: str | None) -> Iterable[int]:
        return self.buckets.get(gpu_type, {}).keys()

    def at(self, gpu_type: str | None, count: int) -> Iterable[str]:
        """The nodes of ``gpu_type`` with ``count`` free GPUs."""
        return self.buckets.get(gpu_type, {}).get(count, {}).keys()

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


class Scratch:
    """A copy-on-write view of a ``Capacity`` (the GPUs about to be released, a preemption or
    cordoned nodes tried), which it never writes.

    A node the view gives to, hides or adds is copied into ``own`` and masked in the base;
    every other node is read from the base, live. So a view costs what it touches, not the
    fleet. Its ``take`` changes only its own nodes: whoever takes from the base while the view
    lives takes from both (``queue._Pass._take``). ``fork`` copies only what this one touched.
    """

    def __init__(self, base: Capacity) -> None:
        self.base = base
        self.own = Capacity()
        self.masked: set[str] = set()  # base nodes hidden, or held in ``own`` instead
        self.hidden_kinds: Counter[InstanceType] = Counter()  # the masked base nodes' kinds

    def fork(self) -> Scratch:
        other = Scratch(self.base)
        other.own = self.own.copy()
        other.masked = set(self.masked)
        other.hidden_kinds = self.hidden_kinds.copy()
        return other

    def add_node(self, name: str, gpu_type: str | None, size: int, free: Iterable[int]) -> None:
        self.hide(name)
        self.own.add_node(name, gpu_type, size, free)

    def hide(self, name: str) -> None:
        """Leave ``name`` out of this view."""
        if name in self.own.free:
            self.own.remove_node(name)
        self._mask(name)

    def take(self, node: str, gpus: Iterable[int]) -> None:
        """Take from its own copy of ``node``, if it has one (the base is taken from apart)."""
        self.own.take(node, gpus)

    def give(self, node: str, gpus: Iterable[int]) -> None:
        if self._own(node):
            self.own.give(node, gpus)

    def has(self, node: str) -> bool:
        return node in self.own.free or (node in self.base.free and node not in self.masked)

    def free_of(self, node: str) -> list[int]:
        return self.own.free[node] if node in self.own.free else self.base.free[node]

    def instance_of(self, node: str) -> InstanceType:
        return (self.own if node in self.own.free else self.base).instance_of(node)

    def types(self) -> list[str | None]:
        return list(dict.fromkeys([*self.base.buckets, *self.own.buckets]))

    def counts(self, gpu_type: str | None) -> Iterable[int]:
        return {*self.base.counts(gpu_type), *self.own.counts(gpu_type)}

    def at(self, gpu_type: str | None, count: int) -> Iterable[str]:
        masked = self.masked
        for node in self.base.at(gpu_type, count):
            if node not in masked:
                yield node
        yield from self.own.at(gpu_type, count)

    def total_free(self, gpu_type: str | None) -> int:
        base = self.base
        hidden = sum(len(base.free[n]) for n in self.masked if base.type_of[n] == gpu_type)
        return base.total_free(gpu_type) - hidden + self.own.total_free(gpu_type)

    def nodes_holding(self, shape: Shape) -> int:
        hidden = sum(count for kind, count in self.hidden_kinds.items() if holds(shape, kind))
        return self.base.nodes_holding(shape) - hidden + self.own.nodes_holding(shape)

    def _mask(self, name: str) -> bool:
        """Mask base node ``name``; False if it is not there, or masked already."""
        if name not in self.base.free or name in self.masked:
            return False
        self.masked.add(name)
        self.hidden_kinds[self.base.instance_of(name)] += 1
        return True

    def _own(self, name: str) -> bool:
        """Make ``name`` this view's own copy; False if the view does not have it."""
        if name in self.own.free:
            return True
        if not self._mask(name):
            return False
        kind = self.base.instance_of(name)
        self.own.add_node(name, kind.gpu_type, kind.gpus, self.base.free[name])
        return True


#: Where placements are looked for: a capacity, or a pass's view of one.
Free = Capacity | Scratch


def place(shape: Shape, capacity: Free) -> Placement | None:
    """``shape.ranks`` distinct nodes with ``shape.per_rank`` free GPUs each, or None."""
    types = capacity.types() if shape.gpu_type is None else [shape.gpu_type]
    counts = sorted({n for t in types for n in capacity.counts(t) if n >= shape.per_rank})
    chosen: list[str] = []
    for count in counts:
        for gpu_type in types:
            for node in capacity.at(gpu_type, count):
                if (
                    shape.node_gpus is not None
                    and capacity.instance_of(node).gpus != shape.node_gpus
                ):
                    continue
                chosen.append(node)
                if len(chosen) == shape.ranks:
                    return [(name, capacity.free_of(name)[: shape.per_rank]) for name in chosen]
    return None


def why_waiting(shape: Shape, capacity: Free, cordoned: int = 0) -> str:
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
