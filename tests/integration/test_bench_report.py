"""``bench.report`` at a tiny size: the year's log in the stream and in Parquet, the three
bills equal (the bench checks it), every figure printed. No timing is checked (speed lives in
the figures)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from bench import report
from services.core.valkey import ValkeyProcess

if TYPE_CHECKING:
    from pathlib import Path

    import pytest


async def test_the_bench_prints_every_figure(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Four passes a day, merged as the archiver merges them: the reports read merged segments.
    args = report.parse_args(["--events", "3000", "--repeat", "1", "--passes-a-day", "4"])
    with ValkeyProcess(tmp_path / "valkey") as server:
        assert await report.run(args, server.url, tmp_path) == 0

    out = capsys.readouterr().out
    wrote = re.search(
        r"^  \d[\d,]* runs; 4 passes a day wrote ([\d,]+) segments, listed as ([\d,]+);", out, re.M
    )
    assert wrote is not None, out
    written, listed = (int(n.replace(",", "")) for n in wrote.groups())
    assert listed < written, out  # merged
    for line in ("parquet:", "live, picked:", "live, replayed:"):
        assert re.search(rf"^  {re.escape(line)}\s+\d+\.\d\d s", out, re.MULTILINE), out
    assert re.search(r"ratio replayed / parquet: \d+\.\dx", out), out
    assert re.search(r"^an audit of the last 30 days \(\d[\d,]* entries\)", out, re.MULTILINE)
    assert re.search(r"^bytes per event: valkey \d+ .*, parquet \d+ ", out, re.MULTILINE), out
