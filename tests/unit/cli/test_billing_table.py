"""``mcli billing``'s table: unpriced GPU-hours apart, the open mark on the TOTAL too, and a
note when the rounded lines do not add up to the rounded TOTAL."""

from __future__ import annotations

import io
from decimal import Decimal

from rich.console import Console, RenderableType

from cli.commands.reportview import billing_table
from projections.billing import BilledAttempt, report

HOUR = 3_600_000
PRICES = {"a100": Decimal("2.50")}


def render(renderable: RenderableType) -> list[str]:
    out = io.StringIO()
    Console(file=out, width=200, highlight=False, markup=False, emoji=False).print(renderable)
    return [line.rstrip() for line in out.getvalue().splitlines()]


def attempt(user: str, gpu_type: str, gpus: int, ms: int, *, open_: bool = False) -> BilledAttempt:
    return BilledAttempt(
        run_id=user, run_name=user, attempt=0, user=user, cluster="c", gpu_type=gpu_type,
        gpus=gpus, started_at=0, ended_at=None if open_ else ms,
    )  # fmt: skip


def cells(lines: list[str]) -> dict[str, list[str]]:
    return {line.split()[0]: line.split()[1:] for line in lines[1:] if line.split()}


def test_unpriced_hours_are_apart_and_the_open_mark_reaches_the_total() -> None:
    attempts = [
        attempt("alice", "a100", 2, HOUR),
        attempt("bob", "h100", 1, 3 * HOUR),
        attempt("carol", "a100", 1, HOUR, open_=True),
    ]
    lines = render(billing_table(report(attempts, "user", now=HOUR, prices=PRICES), "user", {}))
    assert lines[0].split() == ["USER", "GPU_HOURS", "COST", "UNPRICED_GPU_HOURS"]
    table = cells(lines)
    assert table["alice"] == ["2.000", "5.00", "0.000"]
    assert table["bob"] == ["3.000", "-", "3.000"]
    assert table["carol"] == ["1.000", "*", "2.50", "0.000"]
    assert table["TOTAL"] == ["6.000", "*", "7.50", "3.000"]
    assert "* includes runs still holding GPUs, counted up to now" in lines
    assert "UNPRICED_GPU_HOURS: h100 (no price in RUNPLANE_GPU_PRICES), not in COST" in lines
    assert not any("rounded" in line for line in lines)


def test_rounded_lines_that_do_not_add_up_say_so() -> None:
    third = HOUR // 3  # 0.333 GPU-hours each, 1.000 together
    attempts = [attempt(user, "a100", 1, third) for user in ("a", "b", "c")]
    lines = render(billing_table(report(attempts, "user", prices=PRICES), "user", {}))
    table = cells(lines)
    assert [table[user][0] for user in "abc"] == ["0.333"] * 3
    assert table["TOTAL"][0] == "1.000"
    assert "Lines are rounded: each TOTAL is the exact sum, rounded once" in lines
