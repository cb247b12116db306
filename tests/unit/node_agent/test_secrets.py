"""A run's secrets laid out for its ranks (``services.node_agent.secrets``): the variables and
files of each type, where they land for a process rank (under its directory) and for a container
(as given), docker credentials per image registry, git's key and token; never a value in a
``repr``."""

from __future__ import annotations

import base64
import json
import shlex
from pathlib import PurePosixPath

import pytest

from events import secrets
from events.secrets import Secret
from services.node_agent import incontainer
from services.node_agent.secrets import (
    ASKPASS,
    TOKEN,
    RunSecrets,
    env_name,
    registry_of_image,
    registry_of_server,
)

ROOT = PurePosixPath("/data/ranks/r1/0/0/secrets")


def make(kind: str, name: str, metadata: dict[str, str], value: dict[str, str]) -> Secret:
    return Secret(name=name, secret_type=kind, metadata=metadata, value=value)  # type: ignore[arg-type]


ENV = make("env", "api-token", {"key": "API_TOKEN"}, {"value": "tok-123"})
HF = make("hf", "hugging-face", {"key": "HF_TOKEN"}, {"value": "hf_abc"})
DB = make("mounted", "db.creds", {"mountPath": "/secrets/db"}, {"value": "pw: x\n"})
GCP = make("gcp", "gcp", {"mountPath": "/secrets/gcp"}, {"value": '{"k": 1}'})
AWS = make(
    "s3",
    "aws",
    {"mountDirectory": "/secrets/aws"},
    {"credentials": "[p]\nk=v\n", "config": "[p]\n", "profile": "p"},
)
GIT = make("git", "gitkey", {"mountPath": "/keys/git"}, {"value": "KEY\n"})
HUB = make(
    "docker",
    "hub",
    {},
    {"server": "https://index.docker.io/v1/", "username": "me", "password": "hub-pw"},
)
PRIVATE = make(
    "docker",
    "private",
    {},
    {"server": "reg.example:5000", "username": "u", "password": "reg-pw", "email": "u@x"},
)
EVERY = RunSecrets("alice", [ENV, HF, DB, GCP, AWS, GIT, HUB, PRIVATE])


def test_env_secrets_are_variables_and_files_are_named_as_mcli_names_them() -> None:
    env = EVERY.environment()
    assert env["API_TOKEN"] == "tok-123"
    assert env["HF_TOKEN"] == "hf_abc"
    assert env["SECRET_PATH_DB_CREDS"] == "/secrets/db/secret"
    assert env["SECRET_PATH_GCP"] == env["GOOGLE_APPLICATION_CREDENTIALS"] == "/secrets/gcp/secret"
    assert env["AWS_CONFIG_FILE"] == "/secrets/aws/config"
    assert env["AWS_SHARED_CREDENTIALS_FILE"] == "/secrets/aws/credentials"
    assert env["AWS_PROFILE"] == "p"
    assert shlex.split(env["GIT_SSH_COMMAND"])[:3] == ["ssh", "-i", "/keys/git/secret"]
    assert env_name("my-secret.v2") == "SECRET_PATH_MY_SECRET_V2"


def test_a_process_rank_gets_every_path_under_its_own_directory() -> None:
    env = EVERY.environment(ROOT, scratch=ROOT.parent)
    assert env["SECRET_PATH_DB_CREDS"] == f"{ROOT}/secrets/db/secret"
    command = shlex.split(env["GIT_SSH_COMMAND"])
    assert command[2] == f"{ROOT}/keys/git/secret"
    assert f"UserKnownHostsFile={ROOT.parent}/known_hosts" in command
    files = {str(f.path): f for f in EVERY.files(ROOT)}
    assert files[f"{ROOT}/secrets/db/secret"].content == b"pw: x\n"
    assert files[f"{ROOT}/secrets/aws/credentials"].content == b"[p]\nk=v\n"
    assert all(path.startswith(str(ROOT) + "/") for path in files)
    assert {f.mode for f in files.values()} == {0o600}


def test_a_git_token_answers_https_clones_through_askpass_never_in_an_argument() -> None:
    token = make("env", "gh", {"key": "GITHUB_TOKEN"}, {"value": "ghp_secret"})
    found = RunSecrets("alice", [token])
    env = found.environment(ROOT)
    assert env["GIT_ASKPASS"] == f"{ROOT}{ASKPASS}"
    files = {f.path: f for f in found.files(ROOT)}
    script = files[PurePosixPath(f"{ROOT}{ASKPASS}")]
    assert script.mode == 0o700
    assert b"ghp_secret" not in script.content
    assert f"{ROOT}{TOKEN}".encode() in script.content
    assert files[PurePosixPath(f"{ROOT}{TOKEN}")].content == b"ghp_secret"
    assert files[PurePosixPath(f"{ROOT}{TOKEN}")].mode == 0o600
    assert "GIT_ASKPASS" not in RunSecrets("alice", [ENV]).environment()


@pytest.mark.parametrize(
    ("image", "registry"),
    [
        ("ubuntu", "docker.io"),
        ("mosaicml/pytorch:latest", "docker.io"),
        ("docker.io/library/bash", "docker.io"),
        ("index.docker.io/me/x", "docker.io"),
        ("reg.example:5000/team/img:1", "reg.example:5000"),
        ("localhost/img", "localhost"),
        ("ghcr.io/org/img@sha256:" + "a" * 64, "ghcr.io"),
    ],
)
def test_the_registry_of_an_image(image: str, registry: str) -> None:
    assert registry_of_image(image) == registry


@pytest.mark.parametrize(
    ("server", "registry"),
    [
        ("https://index.docker.io/v1/", "docker.io"),
        ("docker.io", "docker.io"),
        ("https://ghcr.io", "ghcr.io"),
        ("reg.example:5000", "reg.example:5000"),
        ("http://Reg.Example:5000/v2/", "reg.example:5000"),
    ],
)
def test_the_registry_of_a_docker_secrets_server(server: str, registry: str) -> None:
    assert registry_of_server(server) == registry


def test_docker_credentials_go_to_their_own_registry_only() -> None:
    auth = EVERY.registry_auth("reg.example:5000/team/img")
    assert auth is not None
    assert (auth.username, auth.password, auth.secret) == ("u", "reg-pw", "private")
    assert "reg-pw" not in repr(auth)
    hub = EVERY.registry_auth("mosaicml/pytorch")
    assert hub is not None
    assert hub.secret == "hub"
    assert EVERY.registry_auth("ghcr.io/org/img") is None
    assert EVERY.docker_config("ghcr.io/org/img") is None
    document = EVERY.docker_config("reg.example:5000/team/img")
    assert document is not None
    auths = json.loads(document)["auths"]
    assert list(auths) == ["reg.example:5000"]
    assert base64.b64decode(auths["reg.example:5000"]["auth"]) == b"u:reg-pw"
    everything = json.loads(EVERY.docker_config() or b"{}")["auths"]
    assert sorted(everything) == ["https://index.docker.io/v1/", "reg.example:5000"]


def test_a_repr_names_secrets_and_shows_no_value() -> None:
    shown = repr(EVERY) + repr(EVERY.files()) + repr(EVERY.registry_auths())
    for value in ("tok-123", "hf_abc", "pw: x", "hub-pw", "reg-pw", "KEY"):
        assert value not in shown
    assert "api-token" in repr(EVERY)


def test_runplanes_own_paths_in_a_rank_are_reserved() -> None:
    own = [
        incontainer.SHARED,
        incontainer.PARAMETERS_DIR,
        incontainer.TOKEN_DIR,
        ASKPASS.parent,
    ]
    for path in own:
        assert any(
            str(path) == r or str(path).startswith(r + "/") for r in secrets.RESERVED_PATHS
        ), path
        with pytest.raises(secrets.BadSecret):
            secrets.check_path("metadata.mountPath", f"{path}/mine")
