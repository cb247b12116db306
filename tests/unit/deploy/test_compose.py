"""compose.yaml, checked without a Docker engine: valid against the Compose specification's JSON
schema (vendored in ``tests/data``), and what a deployment needs of it: the log's server with
AOF on a volume and the ACL file's users, every service (two node-agents) logged in as its own
user with its password from a secret, health checks that probe the service beside them,
restart policies, and settings every one of which the service reading it knows (with the
defaults of their ``${VARIABLE:-default}``s, and with compose.cluster.env's values). The
cluster profile: six Valkey nodes as the one server is (AOF, ACL file) in cluster mode, their
replicas' login from a secret, formed by a one-shot container before any service starts.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema.validators import validator_for

from services.core import acl
from services.core.health import SERVICES as PROBED
from services.core.passwords import REPLICATION_CONF, acl_path, password_file
from services.core.sealing import keyring_path
from tests.settings_table import SERVICES, env_name

ROOT = Path(__file__).resolve().parents[3]
SCHEMA = json.loads((ROOT / "tests" / "data" / "compose-spec.json").read_text())
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
RUNPLANE = {name: s for name, s in COMPOSE["services"].items() if s["image"].startswith("runplane")}
#: What ``docker compose up`` starts: the services of no profile.
DEFAULT = {name: s for name, s in RUNPLANE.items() if not s.get("profiles")}
CLUSTER = {name: s for name, s in COMPOSE["services"].items() if "cluster" in s.get("profiles", [])}
NODES = {name: s for name, s in CLUSTER.items() if s["command"][0] == "valkey-server"}
INIT = "valkey-cluster-init"
#: The variables compose.cluster.env sets.
CLUSTER_ENV = dict(
    line.split("=", 1)
    for line in (ROOT / "compose.cluster.env").read_text().splitlines()
    if line and not line.startswith("#")
)
_DEFAULTED = re.compile(r"^\$\{(\w+):-(.*)\}$")


def resolved(value: object, variables: dict[str, str] | None = None) -> str:
    """A value as compose interpolates it (``${NAME:-default}``), from ``variables``."""
    match = _DEFAULTED.match(str(value))
    if match is None:
        return str(value)
    return (variables or {}).get(match[1], match[2])


def schema_errors(document: dict[str, Any]) -> list[str]:
    validator_class = validator_for(SCHEMA)
    validator_class.check_schema(SCHEMA)
    validator = validator_class(SCHEMA)
    return sorted(
        f"/{'/'.join(str(p) for p in error.absolute_path)}: {error.message}"
        for error in validator.iter_errors(document)
    )


def module_of(service: dict[str, Any]) -> str:
    command = service["command"]
    assert command[:2] == ["python", "-m"], command
    return str(command[2])


def test_valid_against_the_compose_specification() -> None:
    assert schema_errors(COMPOSE) == []


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("services", "scheduler", "healthcheck", "intervall"), "5s"),
        (("services", "scheduler", "restart"), ["always"]),
        (("services", "node-agent-1", "depends_on", "redis", "condition"), "healthy"),
    ],
)
def test_the_schema_refuses_what_compose_would(path: tuple[str, ...], value: object) -> None:
    """The validation is real: a misspelt key, a wrong type, an unknown condition fail it."""
    broken = copy.deepcopy(COMPOSE)
    target = broken
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    assert schema_errors(broken) != []


def test_redis_keeps_every_write_in_an_aof_on_a_volume() -> None:
    redis = COMPOSE["services"]["redis"]
    command = redis["command"]
    flags = dict(zip(command[1::2], command[2::2], strict=True))
    assert command[0] == "redis-server"
    assert flags["--appendonly"] == "yes"
    assert flags["--appendfsync"] == "always"
    volume, _, target = redis["volumes"][0].partition(":")
    assert target == "/data"  # the image's working directory, where the AOF is written
    assert volume in COMPOSE["volumes"]


def test_every_service_runs_and_two_node_agents() -> None:
    modules = Counter(module_of(service) for service in DEFAULT.values())
    assert modules == {
        "services.scheduler": 1,
        "services.projector": 1,
        "services.log_collector": 1,
        "services.node_agent": 2,
        "services.api": 1,
    }
    for module in modules:
        assert importlib.util.find_spec(f"{module}.__main__") is not None, module


@pytest.mark.parametrize("name", sorted(set(COMPOSE["services"]) - {INIT}))
def test_every_service_has_a_health_check_and_a_restart_policy(name: str) -> None:
    service = COMPOSE["services"][name]
    assert service["restart"] in {"always", "unless-stopped", "on-failure"}
    check = service["healthcheck"]
    assert check["test"][0] == "CMD"
    assert not check.get("disable", False)


@pytest.mark.parametrize("name", sorted(RUNPLANE))
def test_a_health_check_probes_the_service_it_runs_beside(name: str) -> None:
    service = RUNPLANE[name]
    probed, _ = SERVICES[module_of(service)]
    assert probed in PROBED
    assert service["healthcheck"]["test"] == [
        "CMD",
        "python",
        "-m",
        "services.core.health",
        probed,
    ]


@pytest.mark.parametrize("name", sorted(RUNPLANE))
def test_services_start_once_redis_is_healthy(name: str) -> None:
    depends_on = RUNPLANE[name]["depends_on"]
    assert depends_on["redis"] == {"condition": "service_healthy"}
    # and the cluster formed, with the cluster profile (required: false, nothing without it)
    assert depends_on[INIT] == {"condition": "service_completed_successfully", "required": False}


@pytest.mark.parametrize("variables", [{}, CLUSTER_ENV], ids=["one-server", "cluster"])
@pytest.mark.parametrize("name", sorted(RUNPLANE))
def test_every_setting_is_one_the_service_reads(
    name: str, variables: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The settings ignore unknown variables, so a misspelt one would silently do nothing."""
    service = RUNPLANE[name]
    _, settings_class = SERVICES[module_of(service)]
    known = {env_name(field) for field in settings_class.model_fields}
    environment = {k: resolved(v, variables) for k, v in service["environment"].items()}
    assert set(environment) <= known
    if variables:
        assert environment["RUNPLANE_REDIS_URL"] == f"redis://{sorted(NODES)[0]}:6379/0"
        assert environment["RUNPLANE_REDIS_CLUSTER"] == "true"
        assert environment["RUNPLANE_APPEND_REPLICAS"] == "1"
    else:
        assert environment["RUNPLANE_REDIS_URL"] == "redis://redis:6379/0"
        assert environment["RUNPLANE_REDIS_CLUSTER"] == "false"
    for variable, value in environment.items():
        monkeypatch.setenv(variable, value)
    settings_class()  # the values validate, as the service will read them


def test_node_agents_are_distinct_simulated_nodes_on_the_process_executor() -> None:
    agents = [s for s in DEFAULT.values() if module_of(s) == "services.node_agent"]
    nodes = [agent["environment"]["RUNPLANE_NODE"] for agent in agents]
    volumes = [agent["volumes"][0].partition(":")[0] for agent in agents]
    assert len(set(nodes)) == len(agents)
    assert len(set(volumes)) == len(agents)  # a node's rank state is its own
    for agent in agents:
        environment = agent["environment"]
        assert environment["RUNPLANE_EXECUTOR"] == "process"
        assert int(environment["RUNPLANE_GPUS"]) > 0  # simulated: no nvidia-smi asked
        assert environment["RUNPLANE_DATA_DIR"].startswith("/data/")


#: The ACL user each service's module logs in as (services/core/acl.py).
USERS = {
    "services.scheduler": acl.SCHEDULER,
    "services.projector": acl.PROJECTOR,
    "services.log_collector": acl.LOG_COLLECTOR,
    "services.node_agent": acl.NODE_AGENT,
    "services.api": acl.API,
}


def secret_file(name: str) -> Path:
    return Path(COMPOSE["secrets"][name]["file"])


def test_redis_has_the_acl_files_users_and_no_default() -> None:
    redis = COMPOSE["services"]["redis"]
    command = redis["command"]
    flags = dict(zip(command[1::2], command[2::2], strict=True))
    (secret,) = redis["secrets"]
    assert flags["--aclfile"] == f"/run/secrets/{secret}"
    assert secret_file(secret) == Path("secrets") / acl_path(Path()).name
    assert "requirepass" not in " ".join(command)


@pytest.mark.parametrize("name", sorted(RUNPLANE))
def test_each_service_logs_in_as_its_own_user_with_its_password_from_a_secret(name: str) -> None:
    service = RUNPLANE[name]
    environment = service["environment"]
    user = USERS[module_of(service)]
    assert environment["RUNPLANE_REDIS_USERNAME"] == user
    secret, *others = service["secrets"]  # its own password, and no other
    assert [other for other in others if other != KEYRING] == []
    assert environment["RUNPLANE_REDIS_PASSWORD_FILE"] == f"/run/secrets/{secret}"
    assert secret_file(secret) == Path("secrets") / password_file(Path(), user).name
    for variables in ({}, CLUSTER_ENV):  # no password in the environment
        assert "@" not in resolved(environment["RUNPLANE_REDIS_URL"], variables)


KEYRING = "secrets_keyring"


@pytest.mark.parametrize("name", sorted(RUNPLANE))
def test_only_the_api_and_the_node_agents_get_the_secrets_keyring(name: str) -> None:
    service = RUNPLANE[name]
    environment = service["environment"]
    holds = module_of(service) in ("services.api", "services.node_agent")
    assert (KEYRING in service["secrets"]) == holds
    named = environment.get("RUNPLANE_SECRETS_KEYRING_FILE")
    assert named == (f"/run/secrets/{KEYRING}" if holds else None)
    assert secret_file(KEYRING) == Path("secrets") / keyring_path(Path()).name


def test_the_containers_profile_adds_a_node_on_the_hosts_podman() -> None:
    agent = COMPOSE["services"]["node-agent-containers"]
    assert agent["profiles"] == ["containers"]
    assert agent["build"]["target"] == "container-agent"
    environment = agent["environment"]
    assert environment["RUNPLANE_EXECUTOR"] == "container"
    args = json.loads(environment["RUNPLANE_CONTAINER_ENGINE_ARGS"])
    assert args[0] == "--remote"
    socket = args[args.index("--url") + 1].removeprefix("unix://")
    mounts = dict(volume.split(":", 1) for volume in agent["volumes"])
    assert mounts[socket] == socket  # the host's podman, through its socket
    data = environment["RUNPLANE_DATA_DIR"]
    assert mounts[data] == data  # the engine on the host mounts the ranks' files by this path
    others = [
        s["environment"]["RUNPLANE_NODE"]
        for s in DEFAULT.values()
        if "RUNPLANE_NODE" in s.get("environment", {})
    ]
    assert environment["RUNPLANE_NODE"] not in others
    assert "AS container-agent" in (ROOT / "Dockerfile").read_text()


def test_the_cluster_profile_runs_six_nodes_as_the_one_server_is_in_cluster_mode() -> None:
    assert len(NODES) == 6
    assert CLUSTER_ENV["COMPOSE_PROFILES"] == "cluster"
    for name, node in NODES.items():
        command = node["command"]
        assert command[1] == "/run/secrets/replication_conf"  # a config file: the first argument
        flags = dict(zip(command[2::2], command[3::2], strict=True))
        assert flags["--appendonly"] == "yes"
        assert flags["--appendfsync"] == "always"
        assert flags["--save"] == ""
        assert flags["--aclfile"] == "/run/secrets/users_acl"
        assert flags["--cluster-enabled"] == "yes"
        assert "masterauth" not in command
        assert "requirepass" not in " ".join(command)
        assert sorted(node["secrets"]) == ["replication_conf", "users_acl"]
        volume, _, target = node["volumes"][0].partition(":")
        assert target == "/data", name
        assert volume in COMPOSE["volumes"]
    volumes = [node["volumes"][0] for node in NODES.values()]
    assert len(set(volumes)) == len(NODES)  # each node's data and nodes.conf its own
    assert secret_file("replication_conf") == Path("secrets") / REPLICATION_CONF


def test_the_cluster_is_formed_once_every_node_answers_as_the_operator() -> None:
    init = CLUSTER[INIT]
    assert set(init["depends_on"]) == set(NODES)
    assert all(d == {"condition": "service_healthy"} for d in init["depends_on"].values())
    assert init["restart"] == "on-failure"  # one-shot: done once it exits 0
    assert init["secrets"] == ["operator_password"]
    script = init["command"][0]
    assert "--cluster create" in script
    assert "--cluster-replicas 1" in script
    assert "--user operator" in script
    assert "-a " not in script  # the password in the environment, not on a command line
    assert (
        secret_file("operator_password")
        == Path("secrets") / password_file(Path(), acl.OPERATOR).name
    )
