"""How a process logs in to the log's server (``services.core.settings``): a user and the file
holding its password, or a login in the URL, never both; a password never printed."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from services.core.passwords import PasswordFileError, redacted
from services.core.private import write_private
from services.core.settings import Auth, Settings, invalid, login


def test_the_password_is_read_from_its_file_when_connecting(tmp_path: Path) -> None:
    path = tmp_path / "scheduler.password"
    write_private(path, "s3cret")
    settings = Settings(redis_username="scheduler", redis_password_file=path)
    assert settings.redis_auth() == Auth("scheduler", "s3cret")
    assert login(settings.redis_auth()) == {"username": "scheduler", "password": "s3cret"}
    assert "s3cret" not in repr(settings) + repr(settings.redis_auth())
    assert settings.redis_env() == {
        "RUNPLANE_REDIS_URL": "redis://127.0.0.1:6379/0",
        "RUNPLANE_PARTITIONS": "1",
        "RUNPLANE_REDIS_USERNAME": "scheduler",
        "RUNPLANE_REDIS_PASSWORD_FILE": str(path),
    }


def test_without_a_file_the_url_logs_in() -> None:
    settings = Settings(redis_url="redis://api:pw@host:6379/0")
    assert settings.redis_auth() is None
    assert login(None) == {}


def test_a_password_in_the_url_and_a_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="give one of them") as refused:
        Settings(redis_url="redis://api:pw@host:6379/0", redis_password_file=tmp_path / "p")
    assert invalid(refused.value).startswith("RUNPLANE_REDIS_URL carries a password")


@pytest.mark.parametrize("content", [None, ""])
def test_a_missing_or_empty_file_names_itself(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "node-agent.password"
    if content is not None:
        path.write_text(content)
    with pytest.raises(PasswordFileError, match=str(path)):
        Settings(redis_username="node-agent", redis_password_file=path).redis_auth()


def test_a_url_is_printed_without_its_login() -> None:
    assert redacted("redis://operator:pw@127.0.0.1:6379/0") == "redis://***@127.0.0.1:6379/0"
    assert redacted("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
