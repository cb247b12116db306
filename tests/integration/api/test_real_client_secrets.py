"""Secrets through a real ``python -m services.api`` process over the session's Valkey: the
unmodified ``mosaicml-cli`` 0.8.3 creates every kind runplane keeps, lists and deletes them; a
user sees only their own; names taken, bad fields and unknown names answer 409, 400 and 404; an
admin lists and deletes another's but creates for no one; and no value is ever in an answer, an
event, the API's log or, unsealed, in the store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from events import keys
from events.codec import encode
from services.core import sealing
from services.core.secretstore import SecretValues
from services.core.store import EventStore
from tests.integration.api.conftest import Served
from tests.integration.api.real_client import mcli_bin, run_mcli
from tests.integration.api.seed import ALICE, BOB, ROOT, add_user_with_key

ENV_VALUE = "env-value-zq81"
FILE_TEXT = "file-text-kx20\n"
PASSWORD = "registry-password-pw77"
KEY_TEXT = "-----BEGIN OPENSSH PRIVATE KEY-----\nssh-key-text-ab55\n"
AWS = "[default]\naws_access_key_id=AKIAVALUE99\n"
GCP = '{"type": "service_account", "private_key": "gcp-value-gg33"}\n'
HF = "hf_token-value-hh44"
VALUES = (
    ENV_VALUE,
    FILE_TEXT.strip(),
    PASSWORD,
    "ssh-key-text-ab55",
    "AKIAVALUE99",
    "gcp-value-gg33",
)


@pytest.fixture(scope="module")
def mcli() -> Path:
    return mcli_bin()


async def call(served: Served, user: str, query: str, variables: dict[str, Any]) -> Any:
    async with httpx.AsyncClient() as client:
        response = await client.post(
            served.url,
            json={"query": query, "variables": variables},
            headers={"Authorization": served.keys[user]},
        )
    return response.json()


CREATE = """mutation C($d: CreateSecretInput!) { createSecret(createSecretData: $d) {
  id name type metadata createdAt kind owner stored } }"""
GET = """query G($d: GetSecretsInput!) { getSecrets(getSecretsData: $d) {
  id name type metadata createdAt kind owner stored } }"""
DELETE = """mutation D($d: GetSecretsInput!) { deleteSecrets(getSecretsData: $d) { name type } }"""


def error(answer: Any) -> tuple[int, str]:
    (only,) = answer["errors"]
    return only["extensions"]["code"], only["message"]


async def test_the_real_client_creates_lists_and_deletes_every_kind(
    mcli: Path, tmp_path: Path, served: Served, store: EventStore
) -> None:
    key = served.keys[ALICE]
    served.values += [*VALUES, HF]
    files = tmp_path / "files"
    files.mkdir()
    (files / "creds.txt").write_text(FILE_TEXT)
    (files / "id_rsa").write_text(KEY_TEXT)
    (files / "aws-config").write_text("[default]\nregion=us-east-1\n")
    (files / "aws-credentials").write_text(AWS)
    (files / "gcp.json").write_text(GCP)

    async def ok(*args: str) -> str:
        code, out = await run_mcli(mcli, tmp_path, served.url, key, *args)
        print(out)
        assert code == 0, out
        for value in (*VALUES, HF):
            assert value not in out
        return out

    assert "Created environment secret: foo" in await ok(
        "create", "secret", "env", f"FOO={ENV_VALUE}", "--name", "foo"
    )
    await ok("create", "secret", "mounted", str(files / "creds.txt"), "--name", "creds")
    await ok(
        "create", "secret", "docker", "--server", "https://registry.example:5000",
        "--username", "me", "--password", PASSWORD, "--name", "registry",
    )  # fmt: skip
    await ok("create", "secret", "ssh", str(files / "id_rsa"), "--name", "sshkey")
    await ok("create", "secret", "git-ssh", str(files / "id_rsa"), "--name", "gitkey")
    await ok(
        "create", "secret", "s3", "--config-file", str(files / "aws-config"),
        "--credentials-file", str(files / "aws-credentials"), "--name", "aws",
    )  # fmt: skip
    await ok(
        "create", "secret", "gcp", "--credentials-file", str(files / "gcp.json"), "--name", "gcp"
    )
    assert "Created hugging_face secret: hugging-face" in await ok(
        "create", "secret", "hf", "--token", HF
    )
    listed = await ok("get", "secrets")
    for name, shown in [
        ("foo", "environment"),
        ("creds", "mounted"),
        ("registry", "docker_registry"),
        ("sshkey", "ssh"),
        ("gitkey", "git"),
        ("aws", "s3"),
        ("gcp", "gcp"),
        ("hugging-face", "hugging_face"),
    ]:
        assert any(line.split()[:2] == [name, shown] for line in listed.splitlines()), name
    assert "Unknown" not in listed  # createdAt parses (it needs fractional seconds)
    environment = json.loads(await ok("get", "secrets", "--type", "environment", "-o", "json"))
    assert sorted(s["name"] for s in environment) == ["foo", "hugging-face"]

    # bob sees none of them
    code, out = await run_mcli(mcli, tmp_path, served.url, served.keys[BOB], "get", "secrets")
    assert code == 0, out
    assert "foo" not in out
    assert "registry" not in out

    # The log: names and types, never a value; the store: sealed values only.
    history = await store.history(f"user:{ALICE}")
    logged = b"".join(b"".join(encode(r.event).values()) for r in history)
    assert b"secret.created" in logged
    stored = await SecretValues(store.redis).all(ALICE)
    assert len(stored) == 8
    for value in (*VALUES, HF):
        assert value.encode() not in logged
        assert all(value.encode() not in data for data in stored.values())
    keyring = sealing.load_keyring(served.keyring)
    opened, _ = sealing.unseal(keyring, ALICE, "foo", stored["foo"])
    assert opened.value == {"value": ENV_VALUE}

    assert "Deleted secret(s): foo" in await ok("delete", "secret", "foo", "-y")
    out = await ok("delete", "secrets", "--all", "-y")
    assert "Deleted secret(s):" in out
    assert "foo" not in await ok("get", "secrets")
    assert await SecretValues(store.redis).all(ALICE) == {}
    assert not await store.redis.exists(keys.secret_values(ALICE))
    history = await store.history(f"user:{ALICE}")
    assert sum(1 for r in history if encode(r.event)[b"k"].startswith(b"secret.deleted")) == 8


async def test_a_taken_name_a_bad_field_and_an_unknown_name(
    mcli: Path, tmp_path: Path, served: Served
) -> None:
    key = served.keys[ALICE]
    code, out = await run_mcli(
        mcli, tmp_path, served.url, key, "create", "secret", "env", "A=1", "--name", "dup"
    )
    assert code == 0, out
    code, out = await run_mcli(
        mcli, tmp_path, served.url, key, "create", "secret", "env", "B=2", "--name", "dup"
    )
    print(out)
    assert code == 1
    assert "Error 409: Secret dup: a secret of this name exists" in out
    code, out = await run_mcli(
        mcli, tmp_path, served.url, key, "create", "secret", "env", "A=3", "--name", "other"
    )
    print(out)
    assert code == 1
    assert "Error 409: Secret other: secret dup is at A already" in out
    code, out = await run_mcli(
        mcli, tmp_path, served.url, key, "create", "secret", "env", "C=3", "--name", "Bad_Name"
    )
    print(out)
    assert code == 1
    assert "Error 400: createSecretData.envVarSecret.name: a secret's name is" in out

    bad = {"dockerRegistrySecret": {"name": "reg", "value": {"server": "r", "username": "u"}}}
    assert error(await call(served, ALICE, CREATE, {"d": bad})) == (
        400,
        "createSecretData.dockerRegistrySecret.value.password: is required and may not be empty",
    )
    sftp = {"sftpSSHSecret": {"name": "s", "metadata": {"mountPath": "/s"}, "value": "k"}}
    code_, message = error(await call(served, ALICE, CREATE, {"d": sftp}))
    assert code_ == 400
    assert "runplane does not keep sftp-ssh secrets" in message
    unknown = {"filters": {"name": {"in": ["dup", "nope"]}}}
    assert error(await call(served, ALICE, DELETE, {"d": unknown})) == (
        404,
        "Secret nope not found",
    )
    listed = await call(served, ALICE, GET, {"d": {"filters": {}}})
    assert [s["name"] for s in listed["data"]["getSecrets"]] == ["dup"]  # all or none
    everything: dict[str, Any] = {"filters": {}}
    code_, message = error(await call(served, ALICE, DELETE, {"d": everything}))
    assert code_ == 400
    assert "name the secrets to delete" in message
    code, out = await run_mcli(mcli, tmp_path, served.url, key, "delete", "secret", "nope", "-y")
    assert code == 1
    assert "Could not find secrets(s) matching: nope" in out


async def test_an_admin_lists_and_deletes_another_users_secrets_but_creates_none(
    served: Served,
) -> None:
    mine = {"envVarSecret": {"name": "tok", "metadata": {"key": "TOK"}, "value": ENV_VALUE}}
    created = await call(served, BOB, CREATE, {"d": mine})
    (secret,) = created["data"]["createSecret"]
    assert secret["owner"] == BOB
    assert secret["stored"] is True
    assert secret["type"] == "ENV_VAR"
    assert secret["metadata"] == {"key": "TOK"}
    assert ENV_VALUE not in json.dumps(created)

    bobs = {"filters": {}, "entity": {"userIds": [BOB]}}
    listed = await call(served, ROOT, GET, {"d": bobs})
    assert [s["name"] for s in listed["data"]["getSecrets"]] == ["tok"]
    code, message = error(await call(served, ALICE, GET, {"d": bobs}))
    assert code == 403
    assert "a user manages their own secrets" in message
    for_bob = {**mine, "entity": {"emails": [BOB]}}
    code, message = error(await call(served, ROOT, CREATE, {"d": for_bob}))
    assert code == 403
    assert f"may not create secrets of {BOB}" in message
    gone = await call(
        served,
        ROOT,
        DELETE,
        {"d": {"filters": {"name": {"in": ["tok"]}}, "entity": bobs["entity"]}},
    )
    assert gone["data"]["deleteSecrets"] == [{"name": "tok", "type": "ENV_VAR"}]
    assert (await call(served, BOB, GET, {"d": {"filters": {}}}))["data"]["getSecrets"] == []


async def test_names_may_be_globs_and_types_filter(served: Served) -> None:
    for name, key in [("db-one", "DB1"), ("db-two", "DB2"), ("web", "WEB")]:
        body = {"envVarSecret": {"name": name, "metadata": {"key": key}, "value": "v"}}
        assert "errors" not in await call(served, ALICE, CREATE, {"d": body})
    glob = {"filters": {"name": {"in": ["db-*"]}}}
    listed = await call(served, ALICE, GET, {"d": glob})
    assert [s["name"] for s in listed["data"]["getSecrets"]] == ["db-one", "db-two"]
    mounted = {"filters": {"type": {"in": ["MOUNTED"]}}}
    assert (await call(served, ALICE, GET, {"d": mounted}))["data"]["getSecrets"] == []
    code, message = error(
        await call(served, ALICE, GET, {"d": {"filters": {"type": {"in": ["NOPE"]}}}})
    )
    assert code == 400
    assert "NOPE is not one of" in message


async def test_without_a_keyring_secrets_cannot_be_created_and_the_listing_still_works(
    api: httpx.AsyncClient, store: EventStore
) -> None:
    key = await add_user_with_key(store, ALICE, "user")
    body = {"envVarSecret": {"name": "tok", "metadata": {"key": "TOK"}, "value": ENV_VALUE}}
    headers = {"Authorization": key}
    answer = await api.post(
        "/graphql", json={"query": CREATE, "variables": {"d": body}}, headers=headers
    )
    code, message = error(answer.json())
    assert code == 501
    assert "RUNPLANE_SECRETS_KEYRING_FILE" in message
    listed = await api.post(
        "/graphql", json={"query": GET, "variables": {"d": {"filters": {}}}}, headers=headers
    )
    assert listed.json() == {"data": {"getSecrets": []}}


async def test_an_input_that_does_not_fit_is_refused_without_repeating_it(served: Served) -> None:
    for sent in ({"fooSecret": {"name": "x", "value": ENV_VALUE}}, ENV_VALUE):
        code, message = error(await call(served, ALICE, CREATE, {"d": sent}))
        assert code == 400
        assert "CreateSecretInput" in message
        assert ENV_VALUE not in message
    nobody = {"filters": {}, "entity": {"userIds": ["nobody@example.com"]}}
    assert error(await call(served, ROOT, GET, {"d": nobody})) == (
        404,
        "User nobody@example.com not found",
    )
