"""A service started with bad settings says which variable and why, in one line, and exits 2:
no traceback, nothing started."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

SERVICES = {
    "services.scheduler": "scheduler",
    "services.projector": "projector",
    "services.log_collector": "log-collector",
    "services.node_agent": "node-agent",
}


@pytest.mark.parametrize("module", sorted(SERVICES))
def test_bad_settings_end_the_service_with_one_line_and_exit_2(module: str) -> None:
    env = os.environ | {
        "RUNPLANE_PARTITIONS": "0",
        "RUNPLANE_REDIS_URL": "redis://127.0.0.1:1/0",  # never reached
    }
    done = subprocess.run(
        [sys.executable, "-m", module],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"{SERVICES[module]}: invalid settings: RUNPLANE_PARTITIONS: ")
    assert "greater than or equal to 1" in lines[0]
    assert "Traceback" not in done.stderr
