"""GPUs by CDI: a spec of kind nvidia.com/gpu found on the node, and the check at start."""

from __future__ import annotations

from pathlib import Path

from services.node_agent.container import cdi

SPEC = """\
cdiVersion: 0.5.0
kind: nvidia.com/gpu
devices:
- name: "0"
  containerEdits: {deviceNodes: [{path: /dev/nvidia0}]}
- name: "1"
- name: GPU-8f6a
- name: all
"""


def test_a_spec_of_another_kind_is_not_the_gpus() -> None:
    assert cdi.devices({"kind": "vendor.com/fpga", "devices": [{"name": "0"}]}) is None
    assert cdi.devices("not a mapping") is None
    assert cdi.devices({"kind": cdi.KIND, "devices": [{"name": 0}, {}]}) == frozenset({"0"})


def test_the_first_gpu_spec_in_the_directories(tmp_path: Path) -> None:
    etc, run = tmp_path / "etc", tmp_path / "run"
    etc.mkdir()
    (etc / "other.yaml").write_text("kind: vendor.com/fpga\ndevices: []\n")
    (etc / "broken.json").write_text("{")
    assert cdi.find([etc, run]) is None  # run does not exist: no error
    run.mkdir()
    (run / "nvidia.yaml").write_text(SPEC)
    found = cdi.find([etc, run])
    assert found is not None
    assert found.devices == {"0", "1", "GPU-8f6a", "all"}


def test_real_gpus_without_a_spec_are_refused_with_what_to_install(tmp_path: Path) -> None:
    assert cdi.problem(0, None) is None  # simulated GPUs need no spec
    missing = cdi.problem(2, None, [tmp_path])
    assert missing is not None
    assert "nvidia-ctk cdi generate" in missing
    assert str(tmp_path) in missing
    spec = cdi.Spec(tmp_path / "nvidia.yaml", frozenset({"0", "1", "all"}))
    assert cdi.problem(2, spec) is None
    stale = cdi.problem(3, spec)
    assert stale is not None
    assert "no device 2" in stale
