"""The environment of a rank's command: mcli's variables from the placement, the run's own
variables, the node's environment without the agent's settings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from events.model import RankPlacement
from events.spec import Compute, RunSpec
from services.node_agent.environment import (
    master_port,
    parameters_document,
    rank_environment,
    world_sizes,
)
from services.node_agent.job import RankJob


def job(placement: list[list[int]], rank: int = 0, **spec: Any) -> RankJob:
    return RankJob(
        run_id="r1",
        run_name="hello-abcdef",
        attempt=2,
        rank=rank,
        node=f"node-{rank}",
        spec=RunSpec(
            name="hello", image="ubuntu", command="true", compute=Compute(cluster="local"), **spec
        ),
        placement=[
            RankPlacement(rank=i, node=f"node-{i}", gpus=gpus) for i, gpus in enumerate(placement)
        ],
    )


def env_of(rank_job: RankJob, **kwargs: object) -> dict[str, str]:
    base = {
        "PATH": "/usr/bin",
        "HOME": "/root",
        "RUNPLANE_REDIS_URL": "redis://secret",
        "MOSAICML_API_KEY": "rpk_operators_own",
        "MCLI_CONFIG_DIR": "/root/.mosaic",
    }
    return rank_environment(
        rank_job,
        base=base,
        master_addr="10.0.0.1",
        parameters_path=Path("/ws/parameters.yaml"),
        **kwargs,  # type: ignore[arg-type]
    )


def test_mcli_variables_of_the_second_rank_of_a_two_node_attempt() -> None:
    env = env_of(job([[0, 1, 2, 3], [4, 5, 6, 7]], rank=1))
    assert env["NODE_RANK"] == "1"
    assert env["CUDA_VISIBLE_DEVICES"] == "4,5,6,7"
    assert (env["WORLD_SIZE"], env["LOCAL_WORLD_SIZE"], env["NUM_NODES"]) == ("8", "4", "2")
    assert env["MASTER_ADDR"] == "10.0.0.1"
    assert env["MASTER_PORT"] == str(master_port("r1", 2))
    assert env["RUN_NAME"] == "hello-abcdef"
    assert env["RESUMPTION_INDEX"] == "2"
    assert env["PARAMETERS"] == "/ws/parameters.yaml"
    assert env["HOME"] == "/root"


def test_without_gpus_each_rank_is_one_process_and_sees_no_gpu() -> None:
    env = env_of(job([[], [], []], rank=2))
    assert env["CUDA_VISIBLE_DEVICES"] == ""
    assert (env["WORLD_SIZE"], env["LOCAL_WORLD_SIZE"]) == ("3", "1")


def test_run_variables_are_passed_but_cannot_break_the_rendezvous() -> None:
    env = env_of(job([[0]], env_variables={"MESSAGE": "hi", "NODE_RANK": "7", "PATH": "/opt"}))
    assert env["MESSAGE"] == "hi"
    assert env["NODE_RANK"] == "0"
    assert env["PATH"] == "/opt"  # the run may set its own PATH


def test_the_agents_own_settings_are_not_passed_on() -> None:
    assert not any(name.startswith("RUNPLANE_") for name in env_of(job([[0]])))


def test_the_nodes_mcli_settings_never_reach_a_rank_and_the_platforms_come_last() -> None:
    plain = env_of(job([[0]]))
    assert not [name for name in plain if name.startswith(("MOSAICML_", "MCLI_"))]
    platform = {"MOSAICML_PLATFORM": "true", "MOSAICML_ACCESS_TOKEN_FILE": "/r/token"}
    env = env_of(
        job([[0]], env_variables={"MOSAICML_ACCESS_TOKEN_FILE": "/tmp/mine"}), platform=platform
    )
    assert env["MOSAICML_ACCESS_TOKEN_FILE"] == "/r/token", "a run cannot point its token away"
    assert "MOSAICML_API_KEY" not in env


def test_a_virtual_environment_comes_first_on_the_path() -> None:
    env = env_of(job([[0]]), venv=Path("/ws/venv"))
    assert env["PATH"] == "/ws/venv/bin:/usr/bin"
    assert env["VIRTUAL_ENV"] == "/ws/venv"


@given(run_id=st.text(min_size=1, max_size=40), attempt=st.integers(0, 1000))
def test_master_port_is_stable_and_in_range(run_id: str, attempt: int) -> None:
    port = master_port(run_id, attempt)
    assert 20_000 <= port < 40_000
    assert port == master_port(run_id, attempt)


@given(st.lists(st.lists(st.integers(0, 7), max_size=8, unique=True), min_size=1, max_size=8))
def test_local_world_sizes_add_up_to_the_world_size(placement: list[list[int]]) -> None:
    world = world_sizes(job(placement))[0]
    assert sum(world_sizes(job(placement, rank=r))[1] for r in range(len(placement))) == world


def test_parameters_are_a_yaml_document_json_shaped() -> None:
    document = parameters_document({"lr": 0.1, "layers": [1, 2], "name": "x: y"})
    assert json.loads(document) == {"lr": 0.1, "layers": [1, 2], "name": "x: y"}
