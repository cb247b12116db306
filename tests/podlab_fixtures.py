"""Fixtures of a private podman and registry (``bench.podlab``), checked once by running a
container, with the images the tests pull; imported by the conftests of the tests that run
containers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.podlab import LabError, Podlab, busybox_tar, python_tar


@pytest.fixture(scope="session")
def podlab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podlab]:
    """Podman and a registry of this session's own; skips, with the reason, where podman
    cannot run a container (tried once)."""
    try:
        lab = Podlab(tmp_path_factory.mktemp("podlab"))
    except LabError as exc:
        pytest.skip(f"containers: {exc}")
    problem = lab.problem()
    if problem is not None:
        lab.close()
        pytest.skip(f"containers: {problem}")
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture(scope="session")
def busybox_image(podlab: Podlab) -> str:
    """busybox with a marker file, in the lab's registry (not in the node's cache)."""
    return podlab.push(busybox_tar(), "busybox:1")


@pytest.fixture(scope="session")
def python_image(podlab: Podlab) -> str:
    """Debian with python3, venv and git, in the lab's registry (made once: ``python_tar``)."""
    try:
        return podlab.push(python_tar(), "python:1")
    except LabError as exc:
        pytest.skip(f"containers: the Python image: {exc}")
