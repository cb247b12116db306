"""GPU telemetry on real hardware: during a matmul loop the agent's NVML samples show the GPU
busy, on its gauges and in the rank's summary on ``rank.exited``."""

from __future__ import annotations

import re

import httpx
import pytest

from cli.stack import LocalStack
from events.model import RankExited
from events.status import RunStatus
from tests.e2e.driver import ENDED, Driver, spec
from tests.waiting import eventually

pytestmark = pytest.mark.e2e

# bf16 matmuls on the rank's GPU for about 20 s.
MATMUL_LOOP = (
    'python3 -c "import time, torch; '
    "a = torch.randn(8192, 8192, device='cuda', dtype=torch.bfloat16); "
    "end = time.monotonic() + 20\n"
    "while time.monotonic() < end: a = (a @ a).clamp_(-1, 1)\n"
    "torch.cuda.synchronize(); print('done')\""
)
_UTIL = re.compile(r'^DCGM_FI_DEV_GPU_UTIL\{gpu="(\d+)",[^}]*\} (\d+)$', re.MULTILINE)


@pytest.mark.usefixtures("torch_on_gpu")
async def test_utilization_is_above_zero_during_a_matmul_loop(
    driver: Driver, stack: LocalStack
) -> None:
    url = stack.metrics_url("node-0")
    assert url is not None
    run_id = await driver.submit(spec(MATMUL_LOOP, gpus=1, name="matmul"))
    state = await driver.wait_for(run_id, RunStatus.RUNNING, within=120)
    [rank] = state.latest.ranks

    async def busy() -> int:
        async with httpx.AsyncClient() as client:
            text = (await client.get(url)).text
        utils = {int(gpu): int(util) for gpu, util in _UTIL.findall(text)}
        return utils.get(rank.gpus[0], 0)

    assert await eventually(busy, what="the gauge to show the GPU busy", within=60) > 0
    ended = await driver.wait_for(run_id, *ENDED, within=180)
    assert ended.status is RunStatus.COMPLETED, await driver.output(run_id)
    exits = [r.event async for r in driver.replay() if isinstance(r.event, RankExited)]
    [exit_] = [e for e in exits if e.run_id == run_id]
    assert exit_.gpu_utilization is not None
    assert exit_.gpu_utilization > 0
    assert exit_.gpu_memory_peak_mib is not None
    assert exit_.gpu_memory_peak_mib > 0
