"""The node's health-check command: its failure's reason is its output, reported once per
failure (again only after a pass); a command past its timeout fails."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from services.node_agent.healthcheck import MAX_REASON, keep_checking, reason_of, run_once
from tests.waiting import eventually


async def test_a_passing_check_has_no_reason_and_a_failing_one_says_what_it_printed() -> None:
    assert await run_once("true", 5) is None
    command = "echo 'GPU 3: NVLink down'; echo second >&2; exit 3"
    reason = await run_once(command, 5)
    assert reason == "health check failed (exit 3): GPU 3: NVLink down | second"


async def test_a_check_past_its_timeout_fails() -> None:
    reason = await run_once("sleep 30", 0.2)
    assert reason == "health check failed (timed out): no output"


def test_a_long_output_is_cut_to_its_end() -> None:
    reason = reason_of(1, b"x" * 5000 + b"THE END")
    assert len(reason) == MAX_REASON
    assert reason.endswith("THE END")


async def test_a_failure_is_reported_once_until_the_check_passes_again(tmp_path: Path) -> None:
    flag = tmp_path / "sick"
    flag.write_text("")
    reported: list[str] = []

    async def on_failure(reason: str) -> None:
        reported.append(reason)

    command = f"if [ -e {flag} ]; then echo sick; exit 1; fi"
    task = asyncio.create_task(keep_checking(command, 0.05, 5, on_failure))
    try:
        await eventually(lambda: reported, what="the first failure")
        await asyncio.sleep(0.3)  # allowed: several intervals pass without a second report
        assert len(reported) == 1
        flag.unlink()
        await asyncio.sleep(0.3)  # allowed: it passes for a few intervals
        flag.write_text("")
        await eventually(lambda: len(reported) == 2, what="the failure after a pass")
        assert reported[1].endswith("(exit 1): sick")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
