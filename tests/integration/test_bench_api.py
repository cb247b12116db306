"""``bench.api`` at a small size, as ``python -m bench.api`` runs: it starts a local stack of its
own, takes every figure and prints them. The report must name each figure with its numbers and
say that every follower got every line; no timing is checked (speed lives in the figures)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FOLLOWERS, LINES = 5, 100
SIZES = ["--runs", "200", "--queries", "5", "--submits", "3"]
SIZES += ["--followers", str(FOLLOWERS), "--lines", str(LINES)]
_NUMBER = r"\d[\d,]*\.\d+"


@pytest.mark.e2e
def test_the_report_has_every_figure() -> None:
    bench = subprocess.Popen(
        [sys.executable, "-m", "bench.api", *SIZES],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = bench.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        bench.terminate()  # the bench takes its stack down on SIGTERM
        out, err = bench.communicate(timeout=60)
        raise AssertionError(f"bench.api did not finish within 120 s:\n{out}\n{err}") from None
    assert bench.returncode == 0, err

    two = rf"\s+{_NUMBER}\s+{_NUMBER}"  # p50, p99
    for label in (
        "baseline: { __typename }",
        "baseline: one append of run.submitted (store)",
    ):
        assert re.search(rf"{re.escape(label)}{two}\s*$", out, re.MULTILINE), out
    for label in (
        "everyone's runs, first page (admin, 100 runs)",
        "one run by name (filters.name, admin)",
        "a user's own runs, first page (",
        "createRun round trip (client)",
        "createRun sent -> attempt.running",
        "run.submitted -> attempt.running (log times)",
    ):
        assert re.search(rf"{re.escape(label)}.*{two}{two}\s*$", out, re.MULTILINE), out
    three = rf"{two}\s+{_NUMBER}"  # p50, p99, max
    assert re.search(rf"baseline: 1 follower alone{three}\s+1/1 ", out), out
    assert re.search(rf"{FOLLOWERS} at once{three}{two}\s+{FOLLOWERS}/{FOLLOWERS} ", out), out
    alone = re.escape("{ __typename } meanwhile, 1 following")
    assert re.search(rf"{alone}{three}$", out, re.MULTILINE), out
    crowd = re.escape(f"{{ __typename }} meanwhile, {FOLLOWERS} following")
    assert re.search(rf"{crowd}{three}{two}$", out, re.MULTILINE), out
    assert f"min {LINES}, max {LINES} of {LINES}" in out, out
    assert f"following when the lines began: {FOLLOWERS}/{FOLLOWERS} " in out, out
    assert "after the last line was due: 0" in out, out
    assert "\n  ! " not in out, out  # no follower ended early, no probe failed
