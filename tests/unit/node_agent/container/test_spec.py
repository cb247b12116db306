"""A rank as the engine's command lines: the image by ID, the layout's mounts, the env file
(never the variables in argv), GPUs by CDI or by CUDA_VISIBLE_DEVICES, the memory limit,
labels that tie each container to its rank, and the integrations' scripts."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from events.model import RankPlacement
from events.spec import Compute, RunSpec
from services.node_agent.container import naming, spec
from services.node_agent.incontainer import PRELUDE, BadIntegration
from services.node_agent.job import RankJob

OPTIONS = spec.Options(node="node-a", actor="node-agent@node-a", api_url="http://api/graphql")
FILES = spec.Files(
    shared=Path("/data/r/shared"),
    parameters=Path("/data/r/parameters.yaml"),
    env_file=Path("/data/r/env"),
    token=Path("/data/r/token"),
)
IMAGE_ID = "ab" * 32


def job(gpus: list[int] | None = None, **fields: Any) -> RankJob:
    return RankJob(
        run_id="run1", run_name="hello-abcdef", attempt=1, rank=0, node="node-a",
        spec=RunSpec(
            name="hello", image="reg:5000/img:1", command="python train.py",
            compute=Compute(cluster="local"), **fields,
        ),
        placement=[RankPlacement(rank=0, node="node-a", gpus=[2, 5] if gpus is None else gpus)],
    )  # fmt: skip


def pairs(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == flag]


def test_the_command_runs_under_an_init_from_the_pulled_id_on_the_host_network() -> None:
    argv = spec.run_command(job(), OPTIONS, FILES, image_id=IMAGE_ID, passed=[])
    assert argv[:4] == ["run", "--detach", "--name", "rp-run1-1-0"]
    assert "--init" in argv
    assert pairs(argv, "--pull") == ["never"]
    assert pairs(argv, "--network") == ["host"]
    assert argv[-5:] == ["--entrypoint", "/bin/sh", IMAGE_ID, "-c", PRELUDE]
    assert pairs(argv, "--volume") == [
        "/data/r/shared:/runplane",
        "/data/r/parameters.yaml:/etc/runplane/parameters.yaml:ro",
        "/data/r/token:/var/run/runplane/token:ro",
    ]
    assert pairs(argv, "--env-file") == ["/data/r/env"]
    assert "--memory" not in argv
    assert "--device" not in argv


def test_labels_name_the_rank_and_its_agent() -> None:
    argv = spec.run_command(job(), OPTIONS, FILES, image_id=IMAGE_ID, passed=[])
    labels = dict(label.split("=", 1) for label in pairs(argv, "--label"))
    assert naming.key_of(labels) == job().key
    assert naming.is_rank(labels)
    assert labels["runplane.dev/node"] == "node-a"


def test_no_variable_value_is_on_the_command_line() -> None:
    env = spec.environment(job(env_variables={"SECRETISH": "v@lue"}), OPTIONS, token=True)
    argv = spec.run_command(job(), OPTIONS, FILES, image_id=IMAGE_ID, passed=[])
    assert env["SECRETISH"] == "v@lue"
    assert not any("v@lue" in arg for arg in argv)


def test_a_value_with_a_newline_is_passed_by_name() -> None:
    made = spec.env_file({"ONE": "a=b c", "MANY": "line 1\nline 2"})
    assert made.text == "ONE=a=b c\n"
    assert made.passed == {"MANY": "line 1\nline 2"}
    argv = spec.run_command(job(), OPTIONS, FILES, image_id=IMAGE_ID, passed=list(made.passed))
    assert pairs(argv, "--env") == ["MANY"]


def test_simulated_gpus_are_cuda_visible_devices_and_cdi_gpus_are_devices() -> None:
    simulated = spec.environment(job(), OPTIONS, token=False)
    assert simulated["CUDA_VISIBLE_DEVICES"] == "2,5"
    assert "--device" not in spec.run_command(job(), OPTIONS, FILES, image_id=IMAGE_ID, passed=[])

    cdi = OPTIONS._replace(cdi=True)
    real = spec.environment(job(), cdi, token=False)
    assert "CUDA_VISIBLE_DEVICES" not in real  # the container numbers its GPUs from 0
    argv = spec.run_command(job(), cdi, FILES, image_id=IMAGE_ID, passed=[])
    assert pairs(argv, "--device") == ["nvidia.com/gpu=2", "nvidia.com/gpu=5"]


def test_a_rank_without_gpus_sees_none() -> None:
    env = spec.environment(job(gpus=[]), OPTIONS._replace(cdi=True), token=False)
    assert env["NVIDIA_VISIBLE_DEVICES"] == "void"


def test_the_token_and_the_platform_variables_come_with_an_api() -> None:
    env = spec.environment(job(), OPTIONS, token=True)
    assert env["MOSAICML_ACCESS_TOKEN_FILE"] == "/var/run/runplane/token"
    assert env["MOSAICML_API_ENDPOINT"] == "http://api/graphql"
    assert env["RUNPLANE_COMMAND"] == "python train.py"
    assert "MOSAICML_ACCESS_TOKEN_FILE" not in spec.environment(job(), OPTIONS, token=False)


def test_secrets_env_comes_after_the_runs_and_before_mcli() -> None:
    env = spec.environment(
        job(env_variables={"TOKEN": "run's", "MASTER_ADDR": "nope"}),
        OPTIONS,
        token=False,
        secrets={"TOKEN": "secret's", "NODE_RANK": "9"},
    )
    assert env["TOKEN"] == "secret's"
    assert (env["MASTER_ADDR"], env["NODE_RANK"]) == ("127.0.0.1", "0")


def test_memory_limit_includes_swap() -> None:
    argv = spec.run_command(
        job(), OPTIONS._replace(memory="16g"), FILES, image_id=IMAGE_ID, passed=[]
    )
    assert pairs(argv, "--memory") == ["16g"]
    assert pairs(argv, "--memory-swap") == ["16g"]


def test_mounted_secrets_are_read_only_at_their_paths() -> None:
    files = FILES._replace(secrets=[(PurePosixPath("/etc/creds/key"), Path("/data/r/secrets/k"))])
    argv = spec.run_command(job(), OPTIONS, files, image_id=IMAGE_ID, passed=[])
    assert "/data/r/secrets/k:/etc/creds/key:ro" in pairs(argv, "--volume")


def test_an_integration_runs_its_script_in_the_shared_directory() -> None:
    pip = {"integration_type": "pip_packages", "packages": ["tinypkg"]}
    argv = spec.integration_command(
        job(integrations=[pip]), OPTIONS, FILES, image_id=IMAGE_ID, index=0, passed=[]
    )
    assert argv[:4] == ["run", "--rm", "--name", "rp-run1-1-0-integration-0"]
    assert "/data/r/shared:/runplane" in pairs(argv, "--volume")
    assert "--detach" not in argv
    assert argv[-5:-1] == ["--entrypoint", "/bin/sh", IMAGE_ID, "-c"]
    assert "pip install tinypkg" in argv[-1]
    labels = dict(label.split("=", 1) for label in pairs(argv, "--label"))
    assert not naming.is_rank(labels)
    assert naming.key_of(labels) == job().key


def test_apt_packages_are_refused_in_a_container_of_their_own() -> None:
    apt = {"integration_type": "apt_packages", "packages": ["curl"]}
    with pytest.raises(BadIntegration, match="container executor") as caught:
        spec.integration_command(
            job(integrations=[apt]), OPTIONS, FILES, image_id=IMAGE_ID, index=0, passed=[]
        )
    assert caught.value.index == 0
