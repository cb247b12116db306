"""runplane's own ``mcli create secret ...``, ``mcli get secrets``, ``mcli delete secret ...``
and the SDK's ``create_secret``/``get_secrets``/``delete_secrets``, against a real API process:
values from flags, files and stdin (never from a prompt's echo, never printed), mcli's names,
tables and JSON, globs, and errors with the API's code."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from cli.sdk import Secret, create_secret, delete_secrets, get_secrets
from cli.secrets import SecretInfo
from services.core.secretstore import SecretValues
from services.core.store import EventStore
from tests.integration.api.conftest import Served
from tests.integration.api.seed import ALICE

TOKEN = "env-token-value-q9z"
FILE = "mounted-text-value-r7y\n"
PASSWORD = "docker-password-value-t5x"
HF = "hf_token-value-u3w"


async def mcli(served: Served, *args: str, stdin: str = "", home: Path) -> tuple[int, str]:
    """runplane's ``mcli ARGS`` as alice, stdin given (not a terminal); exit code and output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MOSAICML_", "MCLI_"))}
    env |= {
        "MOSAICML_API_ENDPOINT": served.url,
        "MOSAICML_API_KEY": served.keys[ALICE],
        "HOME": str(home),
        "RUNPLANE_HOME": str(home / "runplane"),
        "COLUMNS": "200",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli.main", *args,
        env=env, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    async with asyncio.timeout(60):
        out, _ = await process.communicate(stdin.encode())
    assert process.returncode is not None
    text = out.decode()
    print(text)
    for value in (TOKEN, FILE.strip(), PASSWORD, HF):
        assert value not in text, "a value printed"
    return process.returncode, text


async def test_create_get_and_delete_with_values_from_stdin_files_and_flags(
    served: Served, tmp_path: Path, store: EventStore
) -> None:
    served.values += [TOKEN, FILE.strip(), PASSWORD, HF]
    secret_file = tmp_path / "db-creds.txt"
    secret_file.write_text(FILE)

    # env: the key and then the value as prompts would take them, from stdin
    code, out = await mcli(
        served, "create", "secret", "env", "--name", "tok", stdin=f"API_TOKEN\n{TOKEN}\n",
        home=tmp_path,
    )  # fmt: skip
    assert code == 0
    assert "✔ Created environment secret: tok" in out
    # mounted: from a file, named after it with mcli's random suffix
    code, out = await mcli(served, "create", "secret", "mounted", str(secret_file), home=tmp_path)
    assert code == 0
    assert "✔ Created mounted secret: db-creds-" in out
    # docker: the password from stdin (a hidden prompt's answer)
    code, out = await mcli(
        served, "create", "secret", "docker", "--name", "reg", "--server", "reg.example:5000",
        "--username", "me", stdin=f"{PASSWORD}\n", home=tmp_path,
    )  # fmt: skip
    assert code == 0
    code, out = await mcli(served, "create", "secret", "hf", stdin=f"{HF}\n", home=tmp_path)
    assert "✔ Created hugging_face secret: hugging-face" in out

    code, out = await mcli(served, "get", "secrets", home=tmp_path)
    assert code == 0
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines()[1:] if line.strip()}
    assert rows["tok"] == "environment"
    assert rows["reg"] == "docker_registry"
    assert rows["hugging-face"] == "hugging_face"
    assert any(name.startswith("db-creds-") and kind == "mounted" for name, kind in rows.items())
    code, out = await mcli(served, "get", "secrets", "--type", "env", "-o", "json", home=tmp_path)
    assert [item["name"] for item in json.loads(out)] == ["tok"]  # hf is not env, though ENV_VAR

    stored = await SecretValues(store.redis).all(ALICE)
    assert all(
        TOKEN.encode() not in data and PASSWORD.encode() not in data for data in stored.values()
    )

    code, out = await mcli(served, "delete", "secret", "db-*", "tok", "-y", home=tmp_path)
    assert code == 0
    assert "✔ Deleted secret(s): db-creds-" in out
    assert "tok" in out
    code, out = await mcli(served, "get", "secrets", "-o", "name", home=tmp_path)
    assert sorted(out.split()) == ["hugging-face", "reg"]


async def test_errors_say_what_and_where(served: Served, tmp_path: Path) -> None:
    code, out = await mcli(served, "create", "secret", "env", "A=1", "--name", "x", home=tmp_path)
    assert code == 0
    code, out = await mcli(served, "create", "secret", "env", "B=1", "--name", "x", home=tmp_path)
    assert code == 1
    assert "✗ Error 409: Secret x: a secret of this name exists" in out
    code, out = await mcli(
        served, "create", "secret", "mounted", str(tmp_path / "missing"), home=tmp_path
    )
    assert code == 1
    assert "does not exist or is not a file" in out
    code, out = await mcli(
        served, "create", "secret", "docker", "--name", "r", "--no-input", home=tmp_path
    )
    assert code == 2
    assert "--server is required with --no-input" in out
    code, out = await mcli(
        served, "create", "secret", "mounted", str(tmp_path), "--mount-path", "rel", home=tmp_path
    )
    assert code == 2
    code, out = await mcli(served, "delete", "secret", "nope", "-y", home=tmp_path)
    assert code == 1
    assert "✗ Error 404: Could not find secrets matching: nope" in out


async def test_the_sdk(served: Served, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    served.values.append(TOKEN)
    monkeypatch.setenv("MOSAICML_API_ENDPOINT", served.url)
    monkeypatch.setenv("MOSAICML_API_KEY", served.keys[ALICE])
    monkeypatch.setenv("RUNPLANE_HOME", str(tmp_path))
    secret = Secret(name="sdk", secret_type="env", metadata={"key": "SDK"}, value={"value": TOKEN})
    created = create_secret(secret)
    assert isinstance(created, SecretInfo)
    assert (created.name, created.secret_type, created.metadata) == ("sdk", "env", {"key": "SDK"})
    assert TOKEN not in repr(created)
    assert [s.name for s in get_secrets(secret_types=["environment"])] == ["sdk"]
    assert get_secrets(["nothing-*"]) == []
    assert [s.name for s in delete_secrets([created])] == ["sdk"]
    assert get_secrets() == []
