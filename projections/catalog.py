"""Every projection the projector keeps, by name."""

from __future__ import annotations

from collections.abc import Callable

from projections.attempts import AttemptsProjection
from projections.audit import AuditProjection
from projections.base import Projection
from projections.billing import BillingProjection
from projections.errors import UnknownProjection
from projections.run_status import RunStatusProjection
from projections.utilization import UtilizationProjection

FACTORIES: dict[str, Callable[[], Projection]] = {
    RunStatusProjection.name: RunStatusProjection,
    AttemptsProjection.name: AttemptsProjection,
    BillingProjection.name: BillingProjection,
    AuditProjection.name: AuditProjection,
    UtilizationProjection.name: UtilizationProjection,
}
NAMES = tuple(FACTORIES)


def make(name: str) -> Projection:
    """A fresh (empty) fold of the projection ``name``."""
    factory = FACTORIES.get(name)
    if factory is None:
        raise UnknownProjection(name, list(FACTORIES))
    return factory()


def make_all(names: tuple[str, ...] = NAMES) -> list[Projection]:
    return [make(name) for name in names]
