"""Placement, pure: shapes of requests over a cluster's nodes, and all-or-nothing placement."""

from __future__ import annotations

from events.fit import Fleet, Refusal, Shape, fleet, shapes
from events.spec import Compute
from services.scheduler.placement import Capacity, place, why_waiting

A100 = fleet([("a100", 8)] * 4)  # 4 registered nodes of 8 x a100


def _fleet(*kinds: tuple[str | None, int, int]) -> Fleet:
    """Registered nodes: (gpu_type, GPUs, how many) each."""
    return fleet((gpu_type, gpus) for gpu_type, gpus, count in kinds for _ in range(count))


def _capacity(*nodes: tuple[str, str | None, int, list[int]]) -> Capacity:
    capacity = Capacity()
    for name, gpu_type, size, free in nodes:
        capacity.add_node(name, gpu_type, size, free)
    return capacity


def _full(
    name: str, gpu_type: str | None = "a100", size: int = 8
) -> tuple[str, str | None, int, list[int]]:
    return (name, gpu_type, size, list(range(size)))


def test_sixteen_gpus_on_eight_gpu_nodes_are_two_ranks_of_eight_on_distinct_nodes() -> None:
    found = shapes(Compute(cluster="c", gpus=16), A100)
    assert found == [Shape(2, 8, "a100")]
    placement = place(found[0], _capacity(_full("n1"), _full("n2"), _full("n3")))
    assert placement is not None
    assert len(placement) == 2
    assert len({node for node, _ in placement}) == 2
    assert all(gpus == list(range(8)) for _, gpus in placement)


def test_a_request_with_nodes_gives_each_rank_its_share() -> None:
    assert shapes(Compute(cluster="c", gpus=8, nodes=2), A100) == [Shape(2, 4, "a100")]
    assert shapes(Compute(cluster="c", gpus=4), A100) == [Shape(1, 4, "a100")]


def test_an_uneven_split_is_refused_for_good() -> None:
    over_nodes = shapes(Compute(cluster="c", gpus=16, nodes=3), A100)
    assert over_nodes == Refusal(True, "16 GPUs do not divide evenly over 3 nodes")
    whole_nodes = shapes(Compute(cluster="c", gpus=12), A100)
    assert isinstance(whole_nodes, Refusal)
    assert whole_nodes.permanent
    assert "12 GPUs do not fill whole 8-GPU nodes" in whole_nodes.message


def test_more_gpus_per_rank_than_any_node_holds_is_refused_for_good() -> None:
    found = shapes(Compute(cluster="c", gpus=16, nodes=1), A100)
    assert found == Refusal(True, "No node in cluster c has 16 x a100 (the largest has 8)")


def test_a_gpu_type_the_cluster_lacks_is_refused_and_a_cluster_without_nodes_waits() -> None:
    unknown = shapes(Compute(cluster="c", gpus=8, gpu_type="h100"), A100)
    assert unknown == Refusal(True, "No node in cluster c has gpu_type h100 (it has a100)")
    empty = shapes(Compute(cluster="c", gpus=8, gpu_type="h100"), fleet([]))
    assert empty == Refusal(False, "Waiting for nodes in cluster c")


def test_gpu_type_must_match() -> None:
    capacity = _capacity(_full("a", "a100"), _full("h", "h100"))
    placement = place(Shape(1, 8, "h100"), capacity)
    assert placement == [("h", list(range(8)))]


def test_gang_two_ranks_but_one_node_free_places_nothing() -> None:
    capacity = _capacity(_full("n1"), ("n2", "a100", 8, [0, 1, 2]))
    assert place(Shape(2, 8, "a100"), capacity) is None
    assert capacity.free == {"n1": list(range(8)), "n2": [0, 1, 2]}  # nothing taken
    assert why_waiting(Shape(2, 8, "a100"), capacity) == (
        "Insufficient resources: needs 16 GPUs, 11 free"
    )


def test_best_fit_prefers_the_fullest_node_that_still_fits() -> None:
    capacity = _capacity(_full("empty"), ("busy", "a100", 8, [5, 6, 7]))
    assert place(Shape(1, 2, "a100"), capacity) == [("busy", [5, 6])]
    assert place(Shape(1, 4, "a100"), capacity) == [("empty", [0, 1, 2, 3])]


def test_cpu_only_is_one_rank_with_no_gpus_on_any_node() -> None:
    assert shapes(Compute(cluster="c", gpus=0), _fleet(("a100", 8, 1), (None, 0, 1))) == [
        Shape(1, 0, None)
    ]
    capacity = _capacity(("cpu", None, 0, []), ("full", "a100", 8, []))
    placement = place(Shape(1, 0, None), capacity)
    assert placement is not None
    assert placement[0][1] == []


def test_take_and_give_keep_the_buckets_right() -> None:
    capacity = _capacity(_full("n1"))
    capacity.take("n1", [0, 1, 2, 3, 4, 5])
    assert capacity.total_free("a100") == 2
    assert place(Shape(1, 4, "a100"), capacity) is None
    capacity.give("n1", [3, 4])
    assert capacity.total_free("a100") == 4
    assert place(Shape(1, 4, "a100"), capacity) == [("n1", [6, 7, 3, 4])]


def test_waiting_reasons_name_what_is_missing() -> None:
    nothing = _capacity()  # the registered nodes are all down
    assert why_waiting(Shape(1, 8, "h100"), nothing) == (
        "Waiting for nodes: needs 1 node with 8 x h100, 0 up (the others are down)"
    )
    one = _capacity(_full("n1"))
    assert why_waiting(Shape(2, 8, "a100"), one) == (
        "Waiting for nodes: needs 2 nodes with 8 x a100, 1 up (the others are down)"
    )
    fragmented = _capacity(("n1", "a100", 8, [0, 1, 2, 3]), ("n2", "a100", 8, [0, 1, 2, 3]))
    assert why_waiting(Shape(1, 8, "a100"), fragmented) == (
        "Insufficient resources: needs 1 node with 8 free GPUs each, 8 GPUs free in total"
    )


def test_a_request_that_needs_more_nodes_than_the_cluster_has_is_refused_for_good() -> None:
    two = _fleet(("a100", 4, 2))  # 2 nodes of 4 GPUs: an 8-GPU cluster
    for compute, needs in [
        (Compute(cluster="c", gpus=1000), "250 nodes with 4 x a100"),
        (Compute(cluster="c", gpus=12), "3 nodes with 4 x a100"),
        (Compute(cluster="c", gpus=3, nodes=3), "3 nodes with 1 x a100"),
        (Compute(cluster="c", gpus=0, nodes=3), "3 nodes with 0 GPUs"),
    ]:
        assert shapes(compute, two) == Refusal(
            True, f"No set of nodes in cluster c can hold it (it needs {needs}, the cluster has 2)"
        )
    assert shapes(Compute(cluster="c", gpus=8), two) == [Shape(2, 4, "a100")]


def test_only_nodes_large_enough_for_a_rank_count() -> None:
    mixed = _fleet(("a100", 8, 1), ("a100", 4, 3))
    refused = shapes(Compute(cluster="c", gpus=16), mixed)  # 2 ranks of 8; one node has 8
    assert refused == Refusal(
        True,
        "No set of nodes in cluster c can hold it (it needs 2 nodes with 8 x a100, "
        "the cluster has 1)",
    )
    assert shapes(Compute(cluster="c", gpus=16, nodes=4), mixed) == [Shape(4, 4, "a100")]


def test_an_instance_keeps_the_ranks_to_its_nodes_and_an_unknown_one_is_refused() -> None:
    mixed = _fleet(("a100", 8, 1), ("a100", 4, 3), ("h100", 8, 1))
    assert shapes(Compute(cluster="c", gpus=8, instance="a100x4"), mixed) == [
        Shape(2, 4, "a100", 4)
    ]
    assert shapes(Compute(cluster="c", gpus=0, instance="h100x8"), mixed) == [
        Shape(1, 0, "h100", 8)
    ]
    assert shapes(Compute(cluster="c", gpus=8, instance="foo"), mixed) == Refusal(
        True, "Instance foo not found in cluster c; known instances: a100x4, a100x8, h100x8"
    )
    assert shapes(Compute(cluster="c", gpus=8, gpu_type="h100", instance="a100x8"), mixed) == (
        Refusal(True, "Instance a100x8 has gpu_type a100, not h100")
    )
    capacity = _capacity(_full("big"), _full("small", size=4), ("busy", "a100", 4, [0]))
    assert place(Shape(1, 2, "a100", 4), capacity) == [("small", [0, 1])]
    assert place(Shape(2, 4, "a100", 4), capacity) is None  # "big" is not of the instance
