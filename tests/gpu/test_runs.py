"""Runs on real GPUs, through a local stack whose one node-agent found them with nvidia-smi:
the node registers what it found; a run sees exactly the GPU it was placed on (and torch sees
one device there); a run that asks for every GPU makes the next one wait until it is stopped;
a stopped run leaves no process on a GPU.
"""

from __future__ import annotations

import pytest

from cli.stack import LocalStack
from events import commands
from events.status import RunStatus
from services.node_agent.hardware import detect_gpus
from tests.e2e.driver import ENDED, USER, Driver, spec
from tests.gpu import nvidia
from tests.waiting import eventually

S = RunStatus
pytestmark = pytest.mark.e2e

PRINT_GPUS = 'echo "CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES"'
# A small bf16 matmul on the rank's GPU, checked against float32 on the CPU.
TORCH_MATMUL = (
    "import torch; "
    "a = torch.randn(1024, 1024, device='cuda').to(torch.bfloat16); "
    "c = (a @ a).float().cpu(); torch.cuda.synchronize(); "
    "ref = a.float().cpu() @ a.float().cpu(); "
    "print(f'device_count={torch.cuda.device_count()}'); "
    "print(f'bf16_matmul_error={float((c - ref).norm() / ref.norm()):.3e}')"
)
# 256 MiB on the GPU, held until the run is stopped: nvidia-smi lists the process meanwhile.
TORCH_HOLD = (
    "import time, torch; "
    "x = torch.ones(1 << 28, dtype=torch.uint8, device='cuda'); torch.cuda.synchronize(); "
    "print('holding', x.numel(), flush=True); "
    "time.sleep(3600)"  # allowed: the run's own workload, held until the test stops it
)


async def printed(driver: Driver, run_id: str, prefix: str) -> str:
    """The first line of the run's output that starts with ``prefix``, once it is there."""

    async def line() -> str | None:
        return next((text for text in await driver.output(run_id) if text.startswith(prefix)), None)

    found: str = await eventually(line, what=f"run {run_id[:6]} to print {prefix!r}", within=120)
    return found


async def node_gpus(driver: Driver) -> int:
    [registered] = await driver.registrations()
    return registered.gpus


async def completes_on_one_gpu(driver: Driver, run_id: str) -> None:
    """The run completes, placed on one GPU, and printed that GPU's index as the only one it
    could see (``PRINT_GPUS``)."""
    state = await driver.wait_for(run_id, *ENDED, within=180)
    assert state.status is S.COMPLETED, (state.latest.reason, await driver.output(run_id))
    [rank] = state.latest.ranks
    assert len(rank.gpus) == 1
    assert await printed(driver, run_id, "CUDA_VISIBLE_DEVICES=") == (
        f"CUDA_VISIBLE_DEVICES={rank.gpus[0]}"
    )


async def test_the_node_registers_the_gpus_nvidia_smi_lists(
    driver: Driver, stack: LocalStack
) -> None:
    assert "RUNPLANE_GPUS" not in stack.services["node-0"].env
    [registered] = await driver.registrations()
    assert registered.gpus == len(nvidia.listed_gpus())
    assert registered.gpu_type == detect_gpus().gpu_type


async def test_a_one_gpu_run_sees_only_the_gpu_it_was_placed_on(driver: Driver) -> None:
    run_id = await driver.submit(spec(PRINT_GPUS, gpus=1, name="gpu-env"))
    await completes_on_one_gpu(driver, run_id)


@pytest.mark.usefixtures("torch_on_gpu")
async def test_torch_in_a_one_gpu_run_sees_one_device_and_multiplies_on_it(
    driver: Driver,
) -> None:
    run_id = await driver.submit(
        spec(f'{PRINT_GPUS}; python3 -c "{TORCH_MATMUL}"', gpus=1, name="gpu-torch")
    )
    await completes_on_one_gpu(driver, run_id)
    assert await printed(driver, run_id, "device_count=") == "device_count=1"
    error = await printed(driver, run_id, "bf16_matmul_error=")
    assert float(error.partition("=")[2]) < 1e-2, error


async def second_run_waits_behind(driver: Driver, holder_command: str) -> tuple[str, str]:
    """Submit a run on every GPU of the node, then a 1-GPU run: the second stays QUEUED while
    the first runs. Returns both run ids."""
    holder = await driver.submit(spec(holder_command, gpus=await node_gpus(driver), name="holder"))
    state = await driver.wait_for(holder, S.RUNNING, *ENDED, within=120)
    assert state.status is S.RUNNING, (state.latest.reason, await driver.output(holder))
    waiter = await driver.submit(spec(PRINT_GPUS, gpus=1, name="waiter"))
    await driver.wait_for(waiter, S.QUEUED)
    await driver.settled("scheduler")  # it has seen the waiter, and found no GPU for it
    assert (await driver.run(waiter)).status is S.QUEUED
    assert (await driver.run(holder)).status is S.RUNNING
    return holder, waiter


async def stop(driver: Driver, run_id: str) -> None:
    await driver.request(run_id, commands.StopRun(actor=USER))
    assert (await driver.wait_for(run_id, *ENDED)).status is S.STOPPED


async def test_a_second_run_waits_until_the_run_on_every_gpu_is_stopped(driver: Driver) -> None:
    holder, waiter = await second_run_waits_behind(driver, "echo holding; sleep 3600")
    await stop(driver, holder)
    await completes_on_one_gpu(driver, waiter)


@pytest.mark.usefixtures("torch_on_gpu")
async def test_a_stopped_run_leaves_no_process_on_the_gpu(driver: Driver) -> None:
    before = nvidia.compute_pids()
    holder, waiter = await second_run_waits_behind(driver, f'python3 -c "{TORCH_HOLD}"')
    await printed(driver, holder, "holding")

    def new_on_gpu() -> set[int]:
        return nvidia.compute_pids() - before

    held: set[int] = await eventually(
        new_on_gpu,
        what="nvidia-smi --query-compute-apps to list the process of the running run",
        within=60,
    )
    await stop(driver, holder)
    await eventually(
        lambda: not nvidia.compute_pids() & held,
        what=f"the stopped run's processes {sorted(held)} to leave the GPU",
        within=60,
    )
    await completes_on_one_gpu(driver, waiter)
