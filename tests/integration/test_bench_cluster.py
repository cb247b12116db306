"""``bench.cluster`` at a tiny size, as ``python -m bench.cluster --quick`` runs it: a 1-shard
and a 3-shard cluster of its own, each line measured on both, and the report printed with
every line's rate, its ratios and the scaling. No timing is checked (speed lives in the
figures)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from bench import cluster

if TYPE_CHECKING:
    import pytest

_RATE = r"\d[\d,]*"
_RATIO = r"\d+\.\d\d"


async def test_the_report_has_every_line_and_the_scaling(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = cluster.parse_args(["--quick", "--shards", "1,3", "--appends", "40", "--writers", "4"])

    assert await cluster.run(args) == 0

    out = capsys.readouterr().out
    for shards in (1, 3):
        for line in (cluster.XADD, cluster.XADD_WAIT, cluster.APPEND):
            row = rf"^\s+{shards}  {re.escape(line)}\s+{_RATE}\s+{_RATIO}\s+{_RATIO}\s"
            assert re.search(row, out, re.MULTILINE), out
        assert re.search(rf"^{shards} shards?: partitions per shard ", out, re.MULTILINE), out
    assert "partitions per shard 6/8/8" in out, out  # the 22 partitions over 3 shards
    for line in (cluster.XADD, cluster.XADD_WAIT, cluster.APPEND):
        row = rf"^{re.escape(line)}\s+{_RATE}\s+{_RATE}\s+{_RATIO}$"
        assert re.search(row, out, re.MULTILINE), out
    assert "bounded by the cores rather than by the design" in out, out
