"""The projections' errors: one root, the two ways a commit can be refused, and a build of a
log with another number of partitions."""

from __future__ import annotations


class ProjectionsError(Exception):
    """Root of every error raised by ``projections``."""


class UnknownProjection(ProjectionsError):
    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"no projection {name!r}; known: {', '.join(known)}")
        self.name = name


class Superseded(ProjectionsError):
    """A commit was refused: another writer moved a checkpoint (``conflict``), or readers were
    switched to another build (``moved``): the writer must start again from the store. Or the
    writer lost its lease (``fenced``): it must stand by."""

    def __init__(self, what: str, key: str, found: str) -> None:
        super().__init__(f"{what}: {key} holds {found!r}")
        self.what = what
        self.key = key
        self.found = found


class OtherPartitions(ProjectionsError):
    """A build stored positions of more partitions than the log it is to fold has: the log's
    partitions were changed (they never may: ``events.keys.partition_of``)."""

    def __init__(self, name: str, namespace: str, stored: int, partitions: int) -> None:
        super().__init__(
            f"the build {namespace} of {name} folded {stored} partitions and the log has "
            f"{partitions}: a log's partitions never change (RUNPLANE_PARTITIONS)"
        )
        self.name = name
        self.namespace = namespace
        self.stored = stored
        self.partitions = partitions
