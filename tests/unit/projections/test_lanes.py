"""How a rebuild spreads the projections over processes."""

from __future__ import annotations

import pytest

from projections.catalog import NAMES
from projections.lanes import COST, default_lanes, plan


def test_two_lanes_split_the_five_projections_by_cost() -> None:
    assert plan(NAMES, 2) == [["attempts", "run_status"], ["audit", "billing", "utilization"]]


@pytest.mark.parametrize("lanes", [1, 2, 3, 4, 5, 9])
def test_every_projection_is_in_exactly_one_lane_and_no_lane_is_empty(lanes: int) -> None:
    groups = plan(NAMES, lanes)
    assert len(groups) == min(lanes, len(NAMES))
    assert all(groups)
    assert sorted(name for group in groups for name in group) == sorted(NAMES)
    assert plan(list(reversed(NAMES)), lanes) == groups  # the order given does not matter


def test_no_lane_carries_more_than_the_costliest_projection_above_an_even_share() -> None:
    for lanes in range(1, len(NAMES) + 1):
        loads = [sum(COST.get(n, 1) for n in group) for group in plan(NAMES, lanes)]
        even = sum(COST.values()) / lanes
        assert max(loads) <= even + max(COST.values())


def test_lanes_must_be_positive_and_default_to_at_most_one_per_projection() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        plan(NAMES, 0)
    assert 1 <= default_lanes(NAMES) <= len(NAMES)
    assert default_lanes(["audit"]) == 1
