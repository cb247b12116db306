"""``--limit`` (and every count of at least 1): 0 and -1 are one usage error, exit 2."""

from __future__ import annotations

import pytest

from cli.main import build_parser


@pytest.mark.parametrize("command", [["get", "runs"], ["audit"]])
@pytest.mark.parametrize("value", ["0", "-1"])
def test_a_limit_below_one_is_one_usage_error(
    command: list[str], value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([*command, "--limit", value])
    assert exited.value.code == 2
    assert (
        capsys.readouterr()
        .err.splitlines()[-1]
        .endswith(f"argument --limit: must be at least 1, got {value}")
    )
