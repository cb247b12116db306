"""Billing: GPU-milliseconds per attempt, and their sums per user, cluster, gpu_type, run, day.

An attempt bills ``gpus x (time it left TERMINATING - time it entered STARTING)``: the time
of its ``attempt.scheduled`` and of its ending event, both the log's own clock. Integers only;
costs are Decimal.

Rows:
- ``attempt`` ``<run_id>:<index>``: one per attempt that was placed (one that never held GPUs
  bills nothing and has no row). Open while it holds GPUs (``ended_at`` None, index ``open``).
  ``days`` splits a closed attempt's GPU-ms at every midnight UTC.
- ``total`` ``<dim>|<value>|<gpu_type>``: the closed attempts' GPU-ms per dimension value and
  gpu_type, for dim in user, cluster, gpu_type, run, day; in the index ``totals:<dim>``.
- ``run`` ``<run_id>``: who ran it, its name and its placed attempts' keys (``_Run``), in no
  index, read by no reader: what a run needs to come back.

A run whose attempts all ended leaves memory (``evict_resting``) and comes back from its
``run`` row, its ``attempt`` rows and its ``run`` totals (``restore``).

Invariants: for every dimension the totals add up to the same number, the sum of the closed
attempts' GPU-ms, to the millisecond (a day's share of an attempt is an integer, and the shares
add up to the attempt). Deleted runs keep billing. ``report`` computes any grouping over any
window from the attempt rows, counting an open attempt up to ``now`` (marked open), per
day or month if asked (``split_by``: the day shares summed, so still exact).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from decimal import Decimal
from typing import Any, ClassVar, Literal

import msgspec

from events.codec import Recorded
from events.model import (
    ATTEMPT_ENDS,
    AttemptScheduled,
    RankExited,
    RunDeleted,
    RunEvent,
    RunSubmitted,
)
from events.usage import DAY_MS, HOUR_MS, gpu_ms
from projections.base import LetsRunsGo, Row, RowKey, day_of, encode, skipped

Dimension = Literal["user", "cluster", "gpu_type", "run", "day"]
DIMENSIONS: tuple[Dimension, ...] = ("user", "cluster", "gpu_type", "run", "day")
GroupBy = Literal["user", "cluster", "gpu_type", "run", "day", "attempt"]
#: A report's lines may be split per period too (``report(per=...)``): a day or a month, UTC.
Period = Literal["day", "month"]
PERIODS: tuple[Period, ...] = ("day", "month")
NO_GPU_TYPE = "none"


_ENDS = ATTEMPT_ENDS


class BilledAttempt(msgspec.Struct, kw_only=True, gc=False):
    run_id: str
    run_name: str
    attempt: int
    user: str
    cluster: str
    gpu_type: str | None
    gpus: int
    started_at: int
    ended_at: int | None = None
    gpu_ms: int | None = None
    days: dict[str, int] = msgspec.field(default_factory=dict)
    run_deleted: bool = False
    #: GPUs per rank, and of the ranks whose rank.exited says how busy their GPUs were: the
    #: sum of utilization (%) x GPUs, and their GPUs. The attempt's mean utilization is
    #: ``util_weight / util_gpus``, over the GPUs that were sampled.
    rank_gpus: list[int] = msgspec.field(default_factory=list)
    util_weight: int = 0
    util_gpus: int = 0


class Total(msgspec.Struct, kw_only=True, gc=False):
    dim: str
    value: str
    gpu_type: str
    gpu_ms: int = 0
    attempts: int = 0


class _Run(msgspec.Struct, array_like=True, gc=False):
    """A run as billing knows it: the ``run`` row (a JSON array)."""

    user: str
    name: str
    attempts: list[str]  # its placed attempts' keys, in order


class _Memory(msgspec.Struct, gc=False):
    """What the fold holds, as the runner keeps it (``projections.base.Resumable``)."""

    runs: dict[str, _Run]
    attempts: dict[str, BilledAttempt]
    totals: dict[str, Total]
    _resting: dict[str, int]


class BillingProjection(LetsRunsGo):
    name: ClassVar[str] = "billing"
    Memory: ClassVar[type[msgspec.Struct]] = _Memory
    #: 2: the GPUs of each rank, and how busy the sampled ones were (rank.exited); 3: a ``run``
    #: row per run, so a run at rest leaves memory whole.
    version: ClassVar[int] = 3
    handles: ClassVar[frozenset[type]] = _ENDS | {
        AttemptScheduled,
        RankExited,
        RunSubmitted,
        RunDeleted,
    }

    def __init__(self) -> None:
        self.runs: dict[str, _Run] = {}
        self.attempts: dict[str, BilledAttempt] = {}
        self.totals: dict[str, Total] = {}
        #: Runs that came to rest (log time, ms), the earliest first, to let go later.
        self._resting: dict[str, int] = {}

    def apply(self, record: Recorded) -> Collection[RowKey]:
        event: Any = record.event  # dispatched on its exact type below
        kind = type(event)
        if kind is AttemptScheduled:
            return self._start(record, event)
        if kind in _ENDS:
            return self._end(event)
        if kind is RankExited:
            return self._usage(event)
        if kind is RunSubmitted:
            if event.run_id not in self.runs:
                self.runs[event.run_id] = _Run(event.actor, event.name, [])
                return (("run", event.run_id),)
        elif kind is RunDeleted and (run := self.runs.get(event.run_id)):
            for key in run.attempts:
                self.attempts[key].run_deleted = True
            return tuple(("attempt", key) for key in run.attempts)
        return ()

    def _start(self, record: Recorded, event: AttemptScheduled) -> Collection[RowKey]:
        run = self.runs.get(event.run_id)
        if run is None:
            return skipped(self.name, record, "unknown run")
        key = f"{event.run_id}:{event.attempt}"
        if key in self.attempts:
            return skipped(self.name, record, "the attempt was placed already")
        run.attempts.append(key)
        self._resting.pop(event.run_id, None)  # it moves again
        self.attempts[key] = BilledAttempt(
            run_id=event.run_id,
            run_name=run.name,
            attempt=event.attempt,
            user=run.user,
            cluster=event.cluster,
            gpu_type=event.gpu_type,
            gpus=sum(len(rank.gpus) for rank in event.ranks),
            started_at=event.time,
            rank_gpus=[len(rank.gpus) for rank in event.ranks],
        )
        return (("attempt", key), ("run", event.run_id))

    def _usage(self, event: RankExited) -> Collection[RowKey]:
        key = f"{event.run_id}:{event.attempt}"
        billed = self.attempts.get(key)
        if billed is None or event.gpu_utilization is None or billed.ended_at is not None:
            return ()
        if not 0 <= event.rank < len(billed.rank_gpus):
            return ()
        gpus = billed.rank_gpus[event.rank]
        billed.util_weight += event.gpu_utilization * gpus
        billed.util_gpus += gpus
        return (("attempt", key),)

    def _end(self, event: RunEvent) -> Collection[RowKey]:
        key = f"{event.run_id}:{event.attempt}"
        billed = self.attempts.get(key)
        if billed is None or billed.ended_at is not None:
            if event.run_id in self.runs:  # never held GPUs (ended while waiting): at rest
                self._resting.setdefault(event.run_id, event.time)
            return ()  # and bills nothing
        billed.ended_at = event.time
        self._resting.setdefault(billed.run_id, event.time)
        billed.gpu_ms = gpu_ms(billed.gpus, billed.started_at, event.time)
        billed.days = split_by_day(billed.gpus, billed.started_at, event.time)
        changed: list[RowKey] = [("attempt", key)]
        gpu_type = billed.gpu_type or NO_GPU_TYPE
        values = {"user": billed.user, "cluster": billed.cluster, "gpu_type": gpu_type}
        values["run"] = billed.run_id
        for dim, value in values.items():
            changed.append(self._add(dim, value, gpu_type, billed.gpu_ms))
        for day, part in billed.days.items():
            changed.append(self._add("day", day, gpu_type, part))
        return changed

    def _add(self, dim: str, value: str, gpu_type: str, ms: int) -> RowKey:
        key = _total_key(dim, value, gpu_type)
        total = self.totals.get(key)
        if total is None:
            total = self.totals[key] = Total(dim=dim, value=value, gpu_type=gpu_type)
        total.gpu_ms += ms
        total.attempts += 1
        return ("total", key)

    def at_rest(self, run_id: str) -> bool:
        run = self.runs.get(run_id)
        return run is not None and all(self.attempts[k].ended_at is not None for k in run.attempts)

    def forget(self, run_id: str) -> None:
        for key in self.runs.pop(run_id).attempts:
            self.totals.pop(_run_total(run_id, self.attempts.pop(key).gpu_type), None)

    def holds(self, run_id: str) -> bool:
        return run_id in self.runs

    def restoring(self, run_id: str, found: Mapping[RowKey, bytes | None]) -> list[RowKey]:
        """Its ``run`` row, then its attempts' rows, then the ``run`` totals of their
        gpu_types."""
        return [] if run_id in self.runs else _to_read(run_id, found)

    def restore(self, run_id: str, found: Mapping[RowKey, bytes | None]) -> None:
        body = found.get(("run", run_id))
        if body is None or run_id in self.runs:
            return
        run = self.runs[run_id] = _run_decoder.decode(body)
        for key in run.attempts:
            self.attempts[key] = _decoded(found[("attempt", key)])
        for (kind, key), stored in found.items():
            if kind == "total" and stored is not None:
                self.totals[key] = msgspec.json.decode(stored, type=Total)
        ends = [self.attempts[k].ended_at or self.attempts[k].started_at for k in run.attempts]
        self._resting[run_id] = max(ends, default=0)  # to leave again, once at rest long enough

    def as_stored(
        self, run_id: str, found: Mapping[RowKey, bytes | None]
    ) -> tuple[list[RowKey], list[Row]]:
        """Its ``run`` row (in no index), its attempts' rows (one still open in ``open``,
        scored by its start) and its ``run`` totals (in ``totals:run``), read as ``restoring``
        reads them. Not the totals by user, cluster, gpu_type or day: every run's."""
        if wanted := _to_read(run_id, found):
            return wanted, []
        body = found.get(("run", run_id))
        if body is None:
            return [], []  # a run this fold never saw
        rows = [Row(kind="run", id=run_id, body=body)]
        totals: dict[str, None] = {}  # the keys of its totals, in order
        for key in _run_decoder.decode(body).attempts:
            stored = found[("attempt", key)]
            billed = _decoded(stored)
            index = () if billed.ended_at is not None else (("open", billed.started_at),)
            rows.append(Row(kind="attempt", id=key, body=stored, index=index))
            totals[_run_total(run_id, billed.gpu_type)] = None
        for key in totals:
            if (stored := found[("total", key)]) is not None:
                total = msgspec.json.decode(stored, type=Total)
                index = ((f"totals:{total.dim}", 0),)
                rows.append(Row(kind="total", id=key, body=stored, index=index))
        return [], rows

    def rows(self, keys: Iterable[RowKey]) -> Iterable[Row]:
        for kind, key in keys:
            if kind == "attempt":
                billed = self.attempts[key]
                score = billed.started_at
                if billed.ended_at is None:
                    yield Row(kind=kind, id=key, body=encode(billed), index=(("open", score),))
                else:
                    yield Row(kind=kind, id=key, body=encode(billed), unindex=("open",))
            elif kind == "run":
                yield Row(kind=kind, id=key, body=encode(self.runs[key]))
            elif kind == "total":
                total = self.totals[key]
                yield Row(
                    kind=kind, id=key, body=encode(total), index=((f"totals:{total.dim}", 0),)
                )


def _to_read(run_id: str, found: Mapping[RowKey, bytes | None]) -> list[RowKey]:
    """A run's rows still to read: its ``run`` row, then its attempts' rows, then the ``run``
    totals of their gpu_types (an attempt still open has none yet: that one is not stored)."""
    row = ("run", run_id)
    if row not in found:
        return [row]
    if (body := found[row]) is None:
        return []  # a run this fold never saw
    wanted = [("attempt", key) for key in _run_decoder.decode(body).attempts]
    if all(key in found for key in wanted):
        gpu_types = {_decoded(found[key]).gpu_type for key in wanted}
        wanted = [("total", _run_total(run_id, gpu_type)) for gpu_type in gpu_types]
    return [key for key in wanted if key not in found]


def _total_key(dim: str, value: str, gpu_type: str) -> str:
    return f"{dim}|{value}|{gpu_type}"


def _run_total(run_id: str, gpu_type: str | None) -> str:
    """The key of a run's total of one gpu_type (an attempt's ``gpu_type`` None: ``none``)."""
    return _total_key("run", run_id, gpu_type or NO_GPU_TYPE)


_run_decoder = msgspec.json.Decoder(_Run)


def _decoded(body: bytes | None) -> BilledAttempt:
    if body is None:
        raise ValueError("an attempt's row is missing: the run cannot be restored")
    return msgspec.json.decode(body, type=BilledAttempt)


def split_by_day(gpus: int, start: int, end: int) -> dict[str, int]:
    """GPU-ms of ``[start, end)`` per UTC day; the parts add up to ``gpu_ms(gpus, start, end)``."""
    days: dict[str, int] = {}
    while start < end:
        midnight = (start // DAY_MS + 1) * DAY_MS
        stop = min(end, midnight)
        days[day_of(start)] = gpu_ms(gpus, start, stop)
        start = stop
    return days


def split_by(period: Period, gpus: int, start: int, end: int) -> dict[str, int]:
    """GPU-ms of ``[start, end)`` per UTC ``period`` (``YYYY-MM-DD`` or ``YYYY-MM``): its days'
    shares (``split_by_day``) summed, so they too add up to ``gpu_ms(gpus, start, end)``."""
    days = split_by_day(gpus, start, end)
    if period == "day":
        return days
    months: dict[str, int] = {}
    for day, part in days.items():
        months[day[:7]] = months.get(day[:7], 0) + part
    return months


# --- reports -----------------------------------------------------------------------------


def mean_utilization(sampled_gpu_ms: int, busy_gpu_ms: int) -> int | None:
    """Busy over sampled GPU-ms, in %; None when nothing was sampled."""
    return round(busy_gpu_ms * 100 / sampled_gpu_ms) if sampled_gpu_ms else None


#: The columns of a report's rows (``Report.rows``), after the one of its grouping.
ROW_FIELDS = ("gpu_hours", "gpu_ms", "cost", "open", "unpriced_gpu_ms", "gpu_utilization")


def shown_hours(ms: int) -> Decimal:
    """GPU-ms as the reports show GPU-hours: to three places."""
    return (Decimal(ms) / HOUR_MS).quantize(Decimal("0.001"))


def shown_cost(cost: Decimal) -> Decimal:
    """A cost as the reports show it: to the cent."""
    return cost.quantize(Decimal("0.01"))


class Line(msgspec.Struct, kw_only=True):
    key: str
    period: str | None = None  # the day or month of the line, in a report ``per`` one
    gpu_ms: int = 0
    #: Of ``gpu_ms``, those of sampled GPUs, and those GPU-ms x their mean utilization / 100.
    sampled_gpu_ms: int = 0
    busy_gpu_ms: int = 0
    open: bool = False  # an attempt still holding GPUs counted up to ``now``
    #: The cost of the GPU-ms whose gpu_type has a price; None without prices, or when none
    #: of the line's GPU-ms has one.
    cost: Decimal | None = None
    #: GPU-ms of gpu_types without a price (with prices given): not in ``cost``.
    unpriced_ms: int = 0

    @property
    def gpu_hours(self) -> Decimal:
        return Decimal(self.gpu_ms) / HOUR_MS

    @property
    def gpu_utilization(self) -> int | None:
        """Mean GPU utilization (%) over the line's sampled GPU-ms; None: nothing sampled."""
        return mean_utilization(self.sampled_gpu_ms, self.busy_gpu_ms)


class Report(msgspec.Struct, kw_only=True):
    group_by: str
    per: str | None = None  # lines split per day or month (``Line.period``), or not
    window: tuple[int, int] | None
    now: int | None
    lines: list[Line]
    gpu_ms: int
    cost: Decimal | None  # the lines' costs summed; None without prices
    unpriced_ms: int = 0
    unpriced_types: list[str] = msgspec.field(default_factory=list)

    @property
    def gpu_utilization(self) -> int | None:
        """Mean GPU utilization (%) over every line's sampled GPU-ms; None: nothing sampled."""
        sampled = sum(line.sampled_gpu_ms for line in self.lines)
        return mean_utilization(sampled, sum(line.busy_gpu_ms for line in self.lines))

    @property
    def open(self) -> bool:
        """Some line counts an attempt still holding GPUs up to ``now``."""
        return any(line.open for line in self.lines)

    def rows(self, names: Mapping[str, str]) -> list[dict[str, Any]]:
        """A row per line as every report shows it (``mcli billing --output csv|json``,
        the web console): the grouping's value (a run by its name in ``names``), then
        ``ROW_FIELDS``; in a report ``per`` a period, the period first."""
        return [
            {
                **({} if self.per is None else {self.per: line.period}),
                self.group_by: names.get(line.key, line.key),
                **_shown(line),
            }
            for line in self.lines
        ]

    def total_row(self) -> dict[str, Any]:
        """The TOTAL as a row: the exact sums, rounded once."""
        return {
            **({} if self.per is None else {self.per: ""}),
            self.group_by: "TOTAL",
            **_shown(self),
        }


def _shown(line: Line | Report) -> dict[str, Any]:
    return {
        "gpu_hours": str(shown_hours(line.gpu_ms)),
        "gpu_ms": line.gpu_ms,
        "cost": None if line.cost is None else str(shown_cost(line.cost)),
        "open": line.open,
        "unpriced_gpu_ms": line.unpriced_ms,
        "gpu_utilization": line.gpu_utilization,
    }


def report(
    attempts: Iterable[BilledAttempt],
    group_by: GroupBy,
    *,
    window: tuple[int, int] | None = None,
    now: int | None = None,
    prices: Mapping[str, Decimal] | None = None,
    per: Period | None = None,
) -> Report:
    """GPU-ms per ``group_by`` value within ``window`` ([start, end) in ms; None: all time),
    and per day or month (UTC) with ``per``: a line per (period, value) that has GPU-ms.

    An open attempt counts up to ``now`` (not at all if ``now`` is None). With ``prices`` (per
    GPU-hour, by gpu_type), what has a price is priced and the GPU-ms of gpu_types without one
    are counted apart (``unpriced_ms``, ``unpriced_types``): one unpriced type never hides the
    cost of the rest. Usage of no GPU-ms (a CPU-only run) costs nothing, priced or not.
    """
    lines: dict[tuple[str, str], Line] = {}
    unpriced: set[str] = set()
    for billed in attempts:
        parts = _parts(billed, group_by, window, now, per)
        gpu_type = billed.gpu_type or NO_GPU_TYPE
        price = None if prices is None else prices.get(gpu_type)
        for key, period, part in parts:
            line = lines.get((period, key))
            if line is None:
                line = lines[period, key] = Line(key=key, period=period or None)
            line.gpu_ms += part
            line.open |= billed.ended_at is None
            if billed.util_gpus and billed.gpus:
                line.sampled_gpu_ms += part * billed.util_gpus // billed.gpus
                line.busy_gpu_ms += part * billed.util_weight // (billed.gpus * 100)
            if price is not None:
                line.cost = (line.cost or Decimal(0)) + Decimal(part) * price / HOUR_MS
            elif prices is not None and part:
                line.unpriced_ms += part
                unpriced.add(gpu_type)
    ordered = [lines[both] for both in sorted(lines)]
    total_cost = None
    if prices is not None:
        for line in ordered:
            if line.cost is None and not line.unpriced_ms:
                line.cost = Decimal(0)
        total_cost = sum((line.cost or Decimal(0) for line in ordered), Decimal(0))
    return Report(
        group_by=group_by,
        per=per,
        window=window,
        now=now,
        lines=ordered,
        gpu_ms=sum(line.gpu_ms for line in ordered),
        cost=total_cost,
        unpriced_ms=sum(line.unpriced_ms for line in ordered),
        unpriced_types=sorted(unpriced),
    )


def _parts(
    billed: BilledAttempt,
    group_by: GroupBy,
    window: tuple[int, int] | None,
    now: int | None,
    per: Period | None,
) -> list[tuple[str, str, int]]:
    """The attempt's GPU-ms within ``window`` (an open one up to ``now``), per group key and
    period ("" without ``per``)."""
    end = billed.ended_at if billed.ended_at is not None else now
    if end is None:
        return []
    start = billed.started_at
    if window is not None:
        start, end = max(start, window[0]), min(end, window[1])
    if end <= start:
        return []
    if group_by == "day":
        days = split_by_day(billed.gpus, start, end)
        if per is None:
            return [(day, "", part) for day, part in days.items()]
        return [(day, day if per == "day" else day[:7], part) for day, part in days.items()]
    key = _group_key(billed, group_by)
    if per is None:
        return [(key, "", gpu_ms(billed.gpus, start, end))]
    return [(key, period, part) for period, part in split_by(per, billed.gpus, start, end).items()]


def _group_key(billed: BilledAttempt, group_by: GroupBy) -> str:
    match group_by:
        case "user":
            return billed.user
        case "cluster":
            return billed.cluster
        case "gpu_type":
            return billed.gpu_type or NO_GPU_TYPE
        case "run":
            return billed.run_id
        case "attempt":
            return f"{billed.run_id}:{billed.attempt}"
        case "day":  # pragma: no cover - split by day above
            return day_of(billed.started_at)
