"""Image references: the Docker/OCI reference grammar, checked without a registry, and a short
name completed as Docker completes it (``normalized``).

The ``process`` executor cannot pull images. It records the image and refuses a reference that
no registry could ever serve, as Kubernetes does for ``InvalidImageName``. The grammar is the
one of ``distribution/reference`` (the library Docker and containerd parse names with)::

    reference   := name [ ":" tag ] [ "@" digest ]
    name        := [ domain "/" ] path-component [ "/" path-component ]*
    domain      := host [ ":" port ]            host: DNS name, or [IPv6]
    path-component := [a-z0-9]+ ( separator [a-z0-9]+ )*     separator: "." "_" "__" "-"+
    tag         := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
    digest      := algorithm ":" hex            sha256: 64 lower-case hex digits

Pure: no IO.
"""

from __future__ import annotations

import re

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|-+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_NAME = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*"
_IPV6 = r"\[[a-fA-F0-9:]+\]"
_DOMAIN = rf"(?:{_DOMAIN_NAME}|{_IPV6})(?::[0-9]+)?"
_NAME = rf"(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"

REFERENCE = re.compile(
    rf"(?P<name>{_NAME})(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?", re.ASCII
)

#: Registered digest algorithms and the exact length of their lower-case hex value.
_DIGEST_HEX = {"sha256": 64, "sha384": 96, "sha512": 128}
_NAME_MAX = 255

FORMAT = "[registry[:port]/]name[:tag][@digest]"


def reference_error(reference: str) -> str | None:
    """Why ``reference`` is not a valid image reference, or None when it is."""
    prefix = f"couldn't parse image reference {reference!r}: invalid reference format"
    match = REFERENCE.fullmatch(reference)
    if match is None:
        return f"{prefix}: {_hint(reference)}"
    if len(match["name"]) > _NAME_MAX:
        return f"{prefix}: repository name must not be more than {_NAME_MAX} characters"
    digest = match["digest"]
    if digest is not None:
        algorithm, _, value = digest.partition(":")
        length = _DIGEST_HEX.get(algorithm)
        if length is None:
            return f"{prefix}: unsupported digest algorithm {algorithm!r}"
        if len(value) != length or value != value.lower():
            return f"{prefix}: a {algorithm} digest is {length} lower-case hex digits"
    return None


def _hint(reference: str) -> str:
    """The likeliest mistake in a reference the grammar refused, in the user's terms."""
    name, at, digest = reference.partition("@")
    repository = _repository(name)
    checks = (
        (not reference, "the image is empty"),
        (any(char.isspace() for char in reference), "an image reference contains no spaces"),
        (repository != repository.lower(), "repository name must be lowercase"),
        (name.endswith(":"), "the tag after ':' is empty"),
        (name.startswith((":", "/")) or not repository, "the repository name is missing"),
        (
            bool(at) and re.fullmatch(_DIGEST, digest) is None,
            "a digest is <algorithm>:<hex>, e.g. sha256:<64 hex digits>",
        ),
    )
    return next((hint for failed, hint in checks if failed), f"expected {FORMAT}")


def _repository(name: str) -> str:
    """The repository path of ``name``: without its registry and tag."""
    first, slash, rest = name.partition("/")
    path = rest if slash and (any(c in first for c in ".:") or first == "localhost") else name
    last_slash = path.rfind("/")
    colon = path.rfind(":")
    return path[:colon] if colon > last_slash else path


def normalized(reference: str) -> str:
    """``reference`` with its registry, as Docker and Kubernetes read a short name:
    ``pytorch`` is ``docker.io/library/pytorch``, ``mosaicml/pytorch:tag`` is
    ``docker.io/mosaicml/pytorch:tag``; a name whose first part is a host (a dot, a port, or
    ``localhost``) is left as it is. (podman would otherwise ask, or try each registry of its
    search list in turn.)"""
    first, slash, _ = reference.partition("/")
    if slash and (any(c in first for c in ".:") or first == "localhost"):
        return reference
    return f"docker.io/{reference}" if slash else f"docker.io/library/{reference}"
