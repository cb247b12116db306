"""Run YAML and RunConfig: validated into the RunSpec, with one clear line per problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.main import build_parser
from events.config import (
    KNOWN_KEYS,
    ConfigError,
    RunConfig,
    fix_name,
    key_table,
    load_file,
    to_spec,
)
from tests.run_yaml_table import DOC, doc_copy, render

GOOD = """\
name: hello-composer
image: mosaicml/pytorch:latest
command: 'echo $MESSAGE'
compute: {cluster: local, gpus: 16, nodes: 2}
scheduling: {priority: low, max_retries: 2}
integrations:
  - {integration_type: git_repo, git_repo: mosaicml/benchmarks, git_branch: main}
env_variables: {MESSAGE: "hello composer!"}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_the_mcli_example_validates(tmp_path: Path) -> None:
    config, warnings = load_file(write(tmp_path, GOOD))
    spec, more = to_spec(config)
    assert warnings == more == []
    assert (spec.name, spec.compute.gpus, spec.compute.nodes) == ("hello-composer", 16, 2)
    assert spec.scheduling.priority == "low"
    assert spec.scheduling.max_retries == 2
    assert spec.env_variables == {"MESSAGE": "hello composer!"}
    assert RunConfig.from_file(write(tmp_path, GOOD)) == config


def test_an_unknown_top_level_key_is_an_error_with_a_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + "imgae: other\nschedulng: {max_retries: 3}\nzzz: 1\n")
    with pytest.raises(ConfigError) as error:
        load_file(path)
    assert str(error.value).splitlines() == [
        f"{path}: imgae: unknown key (did you mean 'image'?)",
        f"{path}: schedulng: unknown key (did you mean 'scheduling'?)",
        f"{path}: zzz: unknown key (known keys: {', '.join(KNOWN_KEYS)})",
    ]
    with pytest.raises(ConfigError, match="comand: unknown key"):
        RunConfig.from_dict({"name": "x", "comand": "echo"})


def test_the_docs_and_run_help_list_every_yaml_key_with_its_type(
    capsys: pytest.CaptureFixture[str],
) -> None:
    copy = doc_copy(DOC.read_text())
    assert copy is not None, "docs/run-yaml.md lost its generated keys block"
    assert copy == render(), "run `python -m tests.run_yaml_table --write`"
    keys = [key for key, _, _ in key_table()]
    assert set(KNOWN_KEYS) <= set(keys)
    assert {"compute.gpus", "scheduling.max_duration", "integrations[git_repo].git_branch"} <= set(
        keys
    )
    assert all(type_name and meaning for _, type_name, meaning in key_table())
    assert "hours" in {k: m for k, _, m in key_table()}["scheduling.max_duration"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    for key, type_name, _ in key_table():
        assert f"{key} ({type_name})" in shown


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"image": None}, "missing image"),
        ({"command": ""}, "missing command"),
        ({"compute": {"cluster": "c", "gpus": 15, "nodes": 2}}, "does not divide evenly"),
        ({"compute": {"cluster": "c", "gpus": -1}}, "compute.gpus: Input should be greater"),
        (
            {"compute": {"cluster": "c", "gpu": 8}},
            "compute.gpu: unknown key (did you mean 'gpus'?)",
        ),
        ({"scheduling": {"max_retries": -1}}, "scheduling.max_retries"),
        ({"scheduling": {"priority": "urgent"}}, "scheduling.priority"),
        ({"compute": {"gpus": 1}}, "compute.cluster is missing"),
        ({"integrations": [{"git_repo": "x"}]}, "has no integration_type"),
        (
            {
                "integrations": [
                    {"integration_type": "git_repo", "git_repo": "x", "gti_branch": "m"}
                ]
            },
            "integrations.0.gti_branch: unknown key (did you mean 'git_branch'?)",
        ),
        ({"scheduling": {"priority": "medium"}}, "Input should be 'auto', 'low' or 'lowest'"),
    ],
)
def test_bad_input_is_one_clear_line_naming_the_field(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    config, _ = load_file(write(tmp_path, GOOD))
    for key, value in change.items():
        setattr(config, key, value)
    with pytest.raises(ConfigError) as error:
        to_spec(config, where="run.yaml")
    assert message in str(error.value)
    assert str(error.value).startswith("run.yaml: ")
    assert "\n" not in str(error.value)


def test_unreadable_files_say_what_and_where(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_file(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match=r"run.yaml:2: "):
        load_file(write(tmp_path, "name: [unclosed\n"))
    with pytest.raises(ConfigError, match="expected a mapping of run fields, got str"):
        load_file(write(tmp_path, "just text\n"))


def test_names_are_fixed_to_rfc_1123_with_a_warning() -> None:
    assert fix_name("hello-world") == ("hello-world", [])
    fixed, warnings = fix_name("Hello_World!")
    assert fixed == "hello-world"
    assert "not RFC 1123" in warnings[0]
    assert len(fix_name("x" * 80)[0]) == 56
    with pytest.raises(ConfigError):
        fix_name("!!!")
