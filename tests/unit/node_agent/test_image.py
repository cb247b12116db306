"""Image references against the Docker/OCI grammar: what a registry could serve, and a clear
reason for what it could not."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.node_agent.image import normalized, reference_error

DIGEST = "sha256:" + "0123456789abcdef" * 4


@pytest.mark.parametrize(
    "reference",
    [
        "mosaicml/pytorch:latest",
        "ubuntu",
        f"ghcr.io/org/img:1.2@{DIGEST}",
        "localhost:5000/a/b",
        "docker.io/library/ubuntu:22.04",
        "my-registry.example.com:443/team/proj/img_name:v1.0-rc.1",
        f"ubuntu@{DIGEST}",
        "a__b/c--d/e.f",
        "[::1]:5000/img",
    ],
)
def test_valid_references(reference: str) -> None:
    assert reference_error(reference) is None


@pytest.mark.parametrize(
    ("reference", "why"),
    [
        ("Bad/Image", "repository name must be lowercase"),
        ("img:", "the tag after ':' is empty"),
        (":tag", "the repository name is missing"),
        ("a b", "contains no spaces"),
        ("img@sha256:xyz", "a digest is <algorithm>:<hex>"),
        ("", "the image is empty"),
        ("img@sha256:" + "a" * 63, "64 lower-case hex digits"),
        ("img@sha256:" + "A" * 64, "64 lower-case hex digits"),
        ("img:" + "t" * 129, "expected [registry[:port]/]name[:tag][@digest]"),
        ("a" * 256, "not be more than 255 characters"),
        ("img/", "expected"),
        ("-img", "expected"),
    ],
)
def test_invalid_references_say_why(reference: str, why: str) -> None:
    error = reference_error(reference)
    assert error is not None
    assert error.startswith(f"couldn't parse image reference {reference!r}: invalid reference")
    assert why in error


_component = st.from_regex(r"[a-z0-9]{1,8}([._-][a-z0-9]{1,8}){0,2}", fullmatch=True)
_tag = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)


@given(
    path=st.lists(_component, min_size=1, max_size=4),
    registry=st.sampled_from(["", "ghcr.io/", "localhost:5000/", "registry.example.com:8443/"]),
    tag=st.none() | _tag,
)
def test_every_reference_built_from_the_grammar_is_valid(
    path: list[str], registry: str, tag: str | None
) -> None:
    reference = registry + "/".join(path) + (f":{tag}" if tag else "")
    assert reference_error(reference) is None


@given(path=st.lists(_component, min_size=1, max_size=3))
def test_an_upper_case_letter_in_the_repository_is_refused(path: list[str]) -> None:
    # In the last component: a first one of several, upper-case or not, may name a registry.
    path[-1] += "X"
    error = reference_error("/".join(path) + ":latest")
    assert error is not None
    assert "lowercase" in error


@pytest.mark.parametrize(
    ("reference", "full"),
    [
        ("ubuntu", "docker.io/library/ubuntu"),
        ("ubuntu:22.04", "docker.io/library/ubuntu:22.04"),
        ("mosaicml/pytorch:latest", "docker.io/mosaicml/pytorch:latest"),
        ("ghcr.io/org/img:1", "ghcr.io/org/img:1"),
        ("localhost/img", "localhost/img"),
        ("127.0.0.1:5000/img:1", "127.0.0.1:5000/img:1"),
        (f"busybox@{DIGEST}", f"docker.io/library/busybox@{DIGEST}"),
    ],
)
def test_a_short_name_is_completed_as_docker_completes_it(reference: str, full: str) -> None:
    assert normalized(reference) == full
