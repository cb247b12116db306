"""Billing, worked by hand: GPUs x (left TERMINATING - entered STARTING), log times only."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events import codec
from projections.billing import (
    DIMENSIONS,
    BilledAttempt,
    BillingProjection,
    Total,
    report,
    split_by,
    split_by_day,
)
from tests.unit.projections.history import History, at, fold
from tests.unit.projections.simulator import history

HOUR = 3_600_000


def billed(h: History) -> BillingProjection:
    projection = BillingProjection()
    fold(projection, h.records)
    return projection


def test_two_nodes_of_eight_gpus_for_ninety_minutes_bill_24_gpu_hours() -> None:
    h = History()
    h.submit("2026-11-24 09:58:00", "r1")
    h.queue("2026-11-24 09:59:00", "r1")
    h.schedule("2026-11-24 10:00:00.000", "r1", nodes=("n1", "n2"), gpus=8)
    h.start("2026-11-24 10:02:00", "r1")
    h.finish("2026-11-24 11:29:40", "r1", end="2026-11-24 11:30:00.000")
    projection = billed(h)
    attempt = projection.attempts["r1:0"]
    assert attempt.gpus == 16
    assert attempt.gpu_ms == 86_400_000
    result = report(projection.attempts.values(), "run")
    assert result.gpu_ms == 86_400_000
    assert result.lines[0].gpu_hours == Decimal("24")


def test_a_run_stopped_while_queued_bills_nothing() -> None:
    h = History()
    h.submit("2026-11-24 09:00:00", "r1")
    h.queue("2026-11-24 09:00:01", "r1")
    h.stop_waiting("2026-11-24 12:00:00", "r1")
    projection = billed(h)
    assert projection.attempts == {}
    assert report(projection.attempts.values(), "user", now=at("2026-11-25 00:00:00")).gpu_ms == 0


def test_a_retried_run_bills_the_sum_of_its_attempts() -> None:
    h = History()
    h.submit("2026-11-24 08:00:00", "r1", max_retries=1)
    h.queue("2026-11-24 08:00:00", "r1")
    h.schedule("2026-11-24 08:00:00", "r1")
    h.start("2026-11-24 08:01:00", "r1")
    h.finish("2026-11-24 08:59:00", "r1", fail=True, end="2026-11-24 09:00:00")  # 16 GPU-h
    h.retry("2026-11-24 09:00:00", "r1", 1)
    h.queue("2026-11-24 09:00:01", "r1", 1)
    h.schedule("2026-11-24 09:30:00", "r1", 1, nodes=("n3",), gpus=4)
    h.start("2026-11-24 09:31:00", "r1", 1)
    h.finish("2026-11-24 11:29:00", "r1", 1, end="2026-11-24 11:30:00")  # 4 x 2 h = 8 GPU-h
    projection = billed(h)
    assert projection.attempts["r1:0"].gpu_ms == 16 * HOUR
    assert projection.attempts["r1:1"].gpu_ms == 8 * HOUR
    by_run = report(projection.attempts.values(), "run")
    assert [(line.key, line.gpu_ms) for line in by_run.lines] == [("r1", 24 * HOUR)]
    assert projection.totals["run|r1|a100"].gpu_ms == 24 * HOUR
    assert projection.totals["run|r1|a100"].attempts == 2


def test_an_attempt_across_midnight_is_split_at_midnight_utc() -> None:
    h = History()
    h.submit("2026-11-24 22:00:00", "r1")
    h.queue("2026-11-24 22:00:00", "r1")
    h.schedule("2026-11-24 23:00:00.000", "r1")  # 16 GPUs
    h.start("2026-11-24 23:01:00", "r1")
    h.finish("2026-11-25 01:29:00", "r1", end="2026-11-25 01:30:00.000")
    projection = billed(h)
    assert projection.attempts["r1:0"].days == {
        "2026-11-24": 16 * HOUR,
        "2026-11-25": 16 * HOUR * 3 // 2,
    }
    by_day = report(projection.attempts.values(), "day")
    assert [(line.key, line.gpu_ms) for line in by_day.lines] == [
        ("2026-11-24", 16 * HOUR),
        ("2026-11-25", 24 * HOUR),
    ]
    assert projection.totals["day|2026-11-25|a100"].gpu_ms == 24 * HOUR
    window = (at("2026-11-25 00:00:00"), at("2026-11-26 00:00:00"))
    assert report(projection.attempts.values(), "user", window=window).gpu_ms == 24 * HOUR


def test_split_by_day_adds_up_for_leap_days_and_year_ends() -> None:
    start, end = at("2028-02-28 23:59:59.999"), at("2029-01-01 00:00:00.001")
    days = split_by_day(3, start, end)
    assert sum(days.values()) == 3 * (end - start)
    assert days["2028-02-29"] == 3 * 86_400_000
    assert days["2028-12-31"] == 3 * 86_400_000
    assert days["2029-01-01"] == 3
    assert len(days) == 1 + 1 + 306 + 1  # Feb 28, Feb 29, March to December, New Year
    first = datetime(2028, 2, 28, tzinfo=UTC)
    assert list(days) == [(first + timedelta(days=n)).strftime("%Y-%m-%d") for n in range(309)]


def test_a_report_per_month_splits_at_midnight_utc_of_the_first_and_adds_up() -> None:
    h = History()
    h.submit("2026-10-31 20:00:00", "r1")
    h.queue("2026-10-31 20:00:00", "r1")
    h.schedule("2026-10-31 22:00:00.000", "r1")  # 16 GPUs
    h.start("2026-10-31 22:01:00", "r1")
    h.finish("2026-11-01 02:59:00", "r1", end="2026-11-01 03:00:00.000")
    attempts = billed(h).attempts.values()
    result = report(attempts, "user", per="month")
    assert [(line.period, line.key, line.gpu_ms) for line in result.lines] == [
        ("2026-10", "alice@example.com", 32 * HOUR),
        ("2026-11", "alice@example.com", 48 * HOUR),
    ]
    assert result.gpu_ms == report(attempts, "user").gpu_ms == 80 * HOUR
    window = (at("2026-11-01 01:00:00"), at("2026-12-01 00:00:00"))
    per_day = report(attempts, "run", per="day", window=window)
    assert [(line.period, line.gpu_ms) for line in per_day.lines] == [("2026-11-01", 32 * HOUR)]
    [row] = per_day.rows({"r1": "first"})
    assert list(row)[:3] == ["day", "run", "gpu_hours"]
    assert (row["day"], row["run"], row["gpu_ms"]) == ("2026-11-01", "first", 32 * HOUR)
    months = split_by("month", 3, at("2028-02-28 12:00:00"), at("2029-01-01 00:00:00.001"))
    assert len(months) == 12
    assert sum(months.values()) == 3 * (at("2029-01-01 00:00:00.001") - at("2028-02-28 12:00:00"))
    assert months["2029-01"] == 3


def test_a_deleted_run_still_bills() -> None:
    h = History()
    h.submit("2026-11-24 10:00:00", "r1")
    h.queue("2026-11-24 10:00:00", "r1")
    h.schedule("2026-11-24 10:00:00", "r1")
    h.start("2026-11-24 10:00:01", "r1")
    h.finish("2026-11-24 10:59:00", "r1", end="2026-11-24 11:00:00")
    h.delete("2026-11-24 12:00:00", "r1")
    projection = billed(h)
    assert projection.attempts["r1:0"].run_deleted
    assert report(projection.attempts.values(), "user").gpu_ms == 16 * HOUR


def test_an_open_attempt_counts_up_to_now_marked_open_and_costs_with_prices() -> None:
    h = History()
    h.submit("2026-11-24 10:00:00", "r1")
    h.queue("2026-11-24 10:00:00", "r1")
    h.schedule("2026-11-24 10:00:00", "r1", nodes=("n1",), gpus=2)
    projection = billed(h)
    rows = {row.id: row for row in projection.rows([("attempt", "r1:0")])}
    assert rows["r1:0"].index == (("open", at("2026-11-24 10:00:00")),)
    assert report(projection.attempts.values(), "run").gpu_ms == 0  # no "now": closed only
    now = at("2026-11-24 13:00:00")
    prices = {"a100": Decimal("2.50")}
    result = report(projection.attempts.values(), "user", now=now, prices=prices)
    [line] = result.lines
    assert (line.gpu_ms, line.open, line.cost) == (6 * HOUR, True, Decimal("15"))
    assert result.cost == Decimal("15")
    assert report(projection.attempts.values(), "user", now=now).lines[0].cost is None


def totals_by_dim(projection: BillingProjection) -> dict[str, int]:
    sums: dict[str, int] = dict.fromkeys(DIMENSIONS, 0)
    for total in projection.totals.values():
        sums[total.dim] += total.gpu_ms
    return sums


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example],
)
@given(rng=st.randoms(use_true_random=False), steps=st.integers(50, 500))
def test_every_grouping_adds_up_to_the_same_gpu_milliseconds(
    rng: random.Random, steps: int
) -> None:
    projection = BillingProjection()
    for position, fields in history(rng, steps, runs=8):
        projection.apply(codec.recorded(position, fields))
    closed = [a for a in projection.attempts.values() if a.gpu_ms is not None]
    expected = sum(a.gpu_ms or 0 for a in closed)
    assert set(totals_by_dim(projection).values()) <= {expected}
    now = max((a.started_at for a in projection.attempts.values()), default=0) + HOUR
    open_total = sum(
        a.gpus * (now - a.started_at) for a in projection.attempts.values() if a.ended_at is None
    )
    for group_by in ("user", "cluster", "gpu_type", "run", "day", "attempt"):
        assert report(projection.attempts.values(), group_by).gpu_ms == expected
        with_now = report(projection.attempts.values(), group_by, now=now)
        assert with_now.gpu_ms == expected + open_total
        assert sum(line.gpu_ms for line in with_now.lines) == with_now.gpu_ms
    rows = list(projection.rows([("total", key) for key in projection.totals]))
    decoded = [msgspec.json.decode(row.body or b"", type=Total) for row in rows]
    assert sum(t.gpu_ms for t in decoded if t.dim == "user") == expected
    for attempt in closed:
        assert sum(attempt.days.values()) == attempt.gpu_ms
        assert isinstance(
            msgspec.json.decode(msgspec.json.encode(attempt), type=BilledAttempt), BilledAttempt
        )


def attempt(run: str, user: str, gpu_type: str | None, gpus: int, hours: float) -> BilledAttempt:
    end = int(hours * HOUR)
    return BilledAttempt(
        run_id=run, run_name=run, attempt=0, user=user, cluster="c", gpu_type=gpu_type,
        gpus=gpus, started_at=0, ended_at=end, gpu_ms=gpus * end,
    )  # fmt: skip


def test_an_unpriced_gpu_type_is_counted_apart_and_the_rest_is_priced() -> None:
    attempts = [
        attempt("r1", "alice", "a100", 2, 1),  # 2 GPU-hours at 2.50
        attempt("r2", "alice", "h100", 1, 3),  # 3 GPU-hours, no price
        attempt("r3", "bob", None, 0, 5),  # CPU-only: 0 GPU-hours of "none", no price
        attempt("r4", "carol", "h100", 4, 1),  # 4 GPU-hours, no price
    ]
    result = report(attempts, "user", prices={"a100": Decimal("2.50")})
    assert result.cost == Decimal("5")  # one unpriced type does not blank the TOTAL
    lines = {line.key: (line.gpu_ms, line.cost, line.unpriced_ms) for line in result.lines}
    assert lines == {
        "alice": (5 * HOUR, Decimal("5"), 3 * HOUR),
        "bob": (0, Decimal(0), 0),
        "carol": (4 * HOUR, None, 4 * HOUR),
    }
    assert (result.cost, result.unpriced_ms, result.unpriced_types) == (
        Decimal("5"),
        7 * HOUR,
        ["h100"],
    )
    unpriced_none = report(attempts[2:3], "gpu_type", prices={"a100": Decimal(1)})
    assert (unpriced_none.cost, unpriced_none.unpriced_types) == (Decimal(0), [])
    assert report(attempts, "user").cost is None  # no prices at all: no cost anywhere


def test_a_run_s_mean_gpu_utilization_weights_its_sampled_gpu_hours() -> None:
    h = History()
    h.submit("2026-11-24 09:58:00", "r1")
    h.queue("2026-11-24 09:59:00", "r1")
    h.schedule("2026-11-24 10:00:00", "r1", nodes=("n1", "n2"), gpus=8)
    h.start("2026-11-24 10:02:00", "r1")
    h.finish("2026-11-24 11:00:00", "r1", usage={0: (90, 70_000), 1: (30, 20_000)})
    h.submit("2026-11-24 09:58:00", "r2")  # simulated GPUs: nothing sampled
    h.queue("2026-11-24 09:59:00", "r2")
    h.schedule("2026-11-24 10:00:00", "r2", nodes=("n3",), gpus=8)
    h.start("2026-11-24 10:02:00", "r2")
    h.finish("2026-11-24 11:00:00", "r2")
    projection = billed(h)
    assert (projection.attempts["r1:0"].util_weight, projection.attempts["r1:0"].util_gpus) == (
        90 * 8 + 30 * 8,
        16,
    )
    result = report(projection.attempts.values(), "run")
    by_run = {line.key: line for line in result.lines}
    assert by_run["r1"].gpu_utilization == 60
    assert by_run["r2"].gpu_utilization is None
    assert result.gpu_utilization == 60  # r2's unsampled GPU-hours do not dilute the mean
