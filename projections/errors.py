"""The projections' errors: one root, and the two ways a commit can be refused."""

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
