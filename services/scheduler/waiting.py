"""The waiting attempts of one cluster, kept in queue order as the log moves them.

Pure: ``ClusterState`` keeps one ``Waiting`` per cluster and changes it run by run
(``put``, ``discard``); a queue pass (``services.scheduler.queue``) reads it.

Invariants:
- ``keys`` holds the queue key of every waiting attempt, sorted: priority first (auto > low >
  lowest), then the time the attempt entered PENDING, then the run id. A change costs a
  binary search and a shift, never a sort of the queue.
- ``by_class`` holds the same keys, sorted, split by class: what the request asks for and its
  priority, all that a pass judges a waiting attempt by. A pass walks the classes side by side
  and can leave a class out once its outcome is fixed for the rest of the pass.
- ``marked`` holds, per class, the runs by what their latest ``attempt.queued`` says (its
  reason's kind, whether the attempt is still PENDING, whether it carried the shape it was
  judged by): the entries a pass must write again for a class it left out are found there,
  without reading the runs whose entry already says it.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Iterator

from events.lifecycle import AttemptState
from events.status import RunStatus

#: (-priority rank, time the attempt entered PENDING, run id): the queue's order.
QueueKey = tuple[int, int, str]
#: What a request asks for: GPUs, nodes, gpu_type, instance.
Request = tuple[int, int | None, str | None, str | None]
#: The request and the priority rank: attempts of one class are judged alike in a pass.
Class = tuple[Request, int]
#: What the attempt's latest ``attempt.queued`` says: its reason's kind, PENDING, judged.
Mark = tuple[str, bool, bool]


@functools.lru_cache(maxsize=4096)
def kind(reason: str) -> str:
    """The kind of a waiting reason: the text before ':' (what a new entry is written for)."""
    return reason.partition(":")[0]


def mark_of(attempt: AttemptState) -> Mark:
    return kind(attempt.queue_reason), attempt.status is RunStatus.PENDING, attempt.judged


def needs_entry(mark: Mark, reason: str, shaped: bool) -> bool:
    """Whether an attempt whose latest ``attempt.queued`` says ``mark`` gets a new one to wait
    for ``reason`` (``shaped``: judged by a shape, which the entry carries): when it enters
    the queue (PENDING), when its entry lacks the shape it has now, and when the kind of its
    reason changes; a queue of 10,000 must not write 10,000 events whenever a count or a
    position moves."""
    was, pending, judged = mark
    return pending or (shaped and not judged) or was != kind(reason)


class Waiting:
    def __init__(self) -> None:
        self.keys: list[QueueKey] = []
        self.by_class: dict[Class, list[QueueKey]] = {}
        self.marked: dict[Class, dict[Mark, dict[str, None]]] = {}
        #: run id -> its key, class and mark.
        self.entries: dict[str, tuple[QueueKey, Class, Mark]] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, run_id: object) -> bool:
        return run_id in self.entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def key_of(self, run_id: str) -> QueueKey:
        return self.entries[run_id][0]

    def order(self) -> list[str]:
        """The run ids in queue order."""
        return [key[2] for key in self.keys]

    def put(self, run_id: str, key: QueueKey, cls: Class, mark: Mark) -> bool:
        """Keep ``run_id`` waiting with this key, class and mark; True if its place in the
        queue changed (it came in, or moved)."""
        entry = self.entries.get(run_id)
        if entry is not None and entry[0] == key and entry[1] == cls:
            if entry[2] != mark:
                self._unmark(run_id, cls, entry[2])
                self._mark(run_id, cls, mark)
                self.entries[run_id] = (key, cls, mark)
            return False
        self.discard(run_id)
        self.entries[run_id] = (key, cls, mark)
        bisect.insort(self.keys, key)
        bisect.insort(self.by_class.setdefault(cls, []), key)
        self._mark(run_id, cls, mark)
        return True

    def discard(self, run_id: str) -> bool:
        """``run_id`` waits no more; True if it did."""
        entry = self.entries.pop(run_id, None)
        if entry is None:
            return False
        key, cls, mark = entry
        _remove(self.keys, key)
        keys = self.by_class[cls]
        _remove(keys, key)
        if not keys:
            del self.by_class[cls]
        self._unmark(run_id, cls, mark)
        return True

    def position(self, key: QueueKey) -> int:
        """How many waiting attempts come before ``key``."""
        return bisect.bisect_left(self.keys, key)

    def _mark(self, run_id: str, cls: Class, mark: Mark) -> None:
        self.marked.setdefault(cls, {}).setdefault(mark, {})[run_id] = None

    def _unmark(self, run_id: str, cls: Class, mark: Mark) -> None:
        by_mark = self.marked[cls]
        runs = by_mark[mark]
        del runs[run_id]
        if not runs:
            del by_mark[mark]
            if not by_mark:
                del self.marked[cls]


def _remove(keys: list[QueueKey], key: QueueKey) -> None:
    index = bisect.bisect_left(keys, key)
    assert keys[index] == key, "a waiting key is in the lists it was put in"
    del keys[index]
