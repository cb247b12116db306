"""Run YAML and RunConfig: validated into the RunSpec, with one clear line per problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.config import ConfigError, RunConfig, fix_name, load_file, to_spec

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


def test_a_typo_d_key_is_a_warning_with_a_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + "imgae: other\n")
    _, warnings = load_file(path)
    assert warnings == [f"{path}: unknown key 'imgae' is ignored (did you mean 'image'?)"]


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
