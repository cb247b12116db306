"""A run's secrets as its ranks get them: read, opened, and laid out for an executor.

``await run_secrets(values, owner, keyring)`` reads the run owner's sealed secrets with the
agent's login (``services.core.secretstore``: read only) and opens them with the node's keyring
(``services.core.sealing``; re-read once when a value names a key it lacks: a rotation). The
result, ``RunSecrets``, is all an executor needs, whatever runs the rank:

- ``environment(root, scratch)``: the variables: each env secret's (``hf``: ``HF_TOKEN``), and
  where the files are, as mcli names them: ``SECRET_PATH_<NAME>`` for each mounted, ssh, git and
  gcp secret (the name upper-cased, ``-`` and ``.`` as ``_``), ``GOOGLE_APPLICATION_CREDENTIALS``
  (gcp), ``AWS_CONFIG_FILE``, ``AWS_SHARED_CREDENTIALS_FILE`` and ``AWS_PROFILE`` (s3),
  ``GIT_SSH_COMMAND`` (git: ``ssh -i <key>``, accepting a host's key the first time into
  ``<scratch>/known_hosts``), and ``GIT_ASKPASS`` when an env secret ``GIT_TOKEN`` (or
  ``GITHUB_TOKEN``) gives https clones a token: git asks the script, which reads the token's
  file; the token is never in an argument or a URL;
- ``files(root)``: each file to put in the rank (``SecretFile``: its path, its bytes, its mode):
  a mounted, ssh, git or gcp secret at ``<mountPath>/secret``; an s3 secret's ``config`` and
  ``credentials`` in its ``mountDirectory``; the askpass script and token file under
  ``/var/run/runplane/git``;
- ``registry_auth(image)`` and ``docker_config(image)``: the docker secret for the image's
  registry (Docker Hub for a name without one), as credentials or as a Docker ``config.json``
  document (``{"auths": {...}}``: what podman's ``--authfile``, Docker's ``DOCKER_CONFIG`` and a
  Kubernetes ``kubernetes.io/dockerconfigjson`` Secret take).

``root`` is where the rank's file system is on this machine: None where the rank sees the paths
as given (a container, a Pod), a directory for the ``process`` executor, whose ranks share the
node's file system: ``/secrets/db/secret`` is then ``<root>/secrets/db/secret`` and every variable
names the path the rank can open.

Invariants: a value is never logged, never in an exception, an event or ``repr``; only names
are (``RunSecrets.names``). Pure but for ``run_secrets``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Final

from events import secrets
from events.model import Reason
from events.secrets import Secret
from services.core import sealing
from services.core.private import write_private_bytes
from services.core.sealing import KeyringFile, SealingError, UnknownKey
from services.core.secretstore import SecretValues
from services.node_agent.errors import NodeAgentError, SetupAborted
from services.node_agent.ranksecrets import RankSecrets

GIT_DIR: Final = PurePosixPath("/var/run/runplane/git")
ASKPASS: Final = GIT_DIR / "askpass"
TOKEN: Final = GIT_DIR / "token"
#: An env secret of one of these keys is also the password of git_repo's https clones.
GIT_TOKEN_KEYS: Final = ("GIT_TOKEN", "GITHUB_TOKEN")
GIT_USERNAME: Final = "x-access-token"  # any name works with a token; GitHub's own choice
DOCKER_HUB: Final = "docker.io"
_HUB_ALIASES: Final = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
_FILE: Final = "secret"
_CREDENTIALS_FILE: Final = frozenset({"gcp"})  # GOOGLE_APPLICATION_CREDENTIALS names its file


class SecretsUnavailable(NodeAgentError):
    """The owner's secrets cannot be given to the rank (no keyring on this node, a key it
    lacks, a value that does not open): the rank fails, with this message, naming the secret
    and never its value."""


@dataclass(frozen=True)
class SecretFile:
    """A file to put in the rank: at ``path`` (as the rank sees it), ``content``, ``mode``."""

    path: PurePosixPath
    content: bytes = field(repr=False)
    mode: int = 0o600
    secret: str = ""  # the secret it comes from (runplane's own files: "")


@dataclass(frozen=True)
class RegistryAuth:
    """A docker secret's credentials for one registry."""

    server: str  # as the secret gives it (https://index.docker.io/v1/, reg.example:5000)
    registry: str  # its host[:port], Docker Hub as docker.io
    username: str
    password: str = field(repr=False)
    email: str | None = None
    secret: str = ""


def registry_of_image(image: str) -> str:
    """The registry an image reference names (``host[:port]``), Docker Hub's for none."""
    first, slash, _ = image.partition("/")
    if slash and (any(c in first for c in ".:") or first == "localhost"):
        return DOCKER_HUB if first in _HUB_ALIASES else first
    return DOCKER_HUB


def registry_of_server(server: str) -> str:
    """The registry a docker secret's server names: its host[:port], scheme and path left
    out (``https://index.docker.io/v1/`` is Docker Hub)."""
    host = re.sub(r"^[a-z]+://", "", server.strip()).split("/", 1)[0].lower()
    return DOCKER_HUB if host in _HUB_ALIASES else host


def env_name(secret_name: str) -> str:
    """mcli's ``SECRET_PATH_<NAME>``: the name upper-cased, ``-`` and ``.`` as ``_``."""
    return "SECRET_PATH_" + re.sub(r"[^A-Z0-9_]", "_", secret_name.upper())


def _at(root: PurePosixPath | None, path: PurePosixPath) -> PurePosixPath:
    return path if root is None else root / path.relative_to("/")


class RunSecrets:
    """One owner's secrets, opened, for one rank (see the module)."""

    def __init__(self, owner: str, opened: list[Secret]) -> None:
        self.owner = owner
        self._secrets = sorted(opened, key=lambda s: s.name)

    def __repr__(self) -> str:
        return f"RunSecrets(owner={self.owner!r}, names={self.names!r})"

    @property
    def names(self) -> list[str]:
        return [s.name for s in self._secrets]

    def __bool__(self) -> bool:
        return bool(self._secrets)

    def _of(self, *kinds: str) -> list[Secret]:
        return [s for s in self._secrets if s.secret_type in kinds]

    # --- the environment and the files ---------------------------------------------------

    @property
    def git_token(self) -> str | None:
        by_key = {s.metadata["key"]: s.value["value"] for s in self._of("env")}
        return next((by_key[k] for k in GIT_TOKEN_KEYS if by_key.get(k)), None)

    def _git_key(self) -> Secret | None:
        keys = self._of("git")
        return keys[0] if keys else None

    def files(self, root: PurePosixPath | None = None) -> list[SecretFile]:
        found = []
        for s in self._of(*secrets.FILE_TYPES):
            path = PurePosixPath(s.metadata["mountPath"]) / _FILE
            found.append(SecretFile(_at(root, path), s.value["value"].encode(), secret=s.name))
        for s in self._of(*secrets.DIRECTORY_TYPES):
            directory = PurePosixPath(s.metadata["mountDirectory"])
            for part in ("config", "credentials"):
                path = _at(root, directory / part)
                found.append(SecretFile(path, s.value[part].encode(), secret=s.name))
        token = self.git_token
        if token is not None:
            script = (
                "#!/bin/sh\n# git's askpass (runplane): the username, or the token from its file\n"
                f'case "$1" in Username*) echo {GIT_USERNAME} ;; '
                f"*) cat {shlex.quote(str(_at(root, TOKEN)))} && echo ;; esac\n"
            )
            found.append(SecretFile(_at(root, ASKPASS), script.encode(), mode=0o700))
            found.append(SecretFile(_at(root, TOKEN), token.encode()))
        return found

    def environment(
        self, root: PurePosixPath | None = None, *, scratch: PurePosixPath | None = None
    ) -> dict[str, str]:
        """The variables the rank gets; ``scratch``: a directory the rank may write, for git's
        ssh's ``known_hosts`` (None: ssh's own, ``~/.ssh/known_hosts``)."""
        env = {s.metadata["key"]: s.value["value"] for s in self._of(*secrets.ENV_TYPES)}
        for s in self._of(*secrets.FILE_TYPES):
            path = str(_at(root, PurePosixPath(s.metadata["mountPath"]) / _FILE))
            env[env_name(s.name)] = path
            if s.secret_type in _CREDENTIALS_FILE:
                env["GOOGLE_APPLICATION_CREDENTIALS"] = path
        for s in self._of(*secrets.DIRECTORY_TYPES):
            directory = _at(root, PurePosixPath(s.metadata["mountDirectory"]))
            env["AWS_CONFIG_FILE"] = str(directory / "config")
            env["AWS_SHARED_CREDENTIALS_FILE"] = str(directory / "credentials")
            if s.value.get("profile"):
                env["AWS_PROFILE"] = s.value["profile"]
        key = self._git_key()
        if key is not None:
            key_path = _at(root, PurePosixPath(key.metadata["mountPath"]) / _FILE)
            known = [] if scratch is None else ["-o", f"UserKnownHostsFile={scratch}/known_hosts"]
            env["GIT_SSH_COMMAND"] = shlex.join(
                [
                    "ssh", "-i", str(key_path), "-o", "IdentitiesOnly=yes",
                    "-o", "StrictHostKeyChecking=accept-new", *known,
                ]
            )  # fmt: skip
        if self.git_token is not None:
            env["GIT_ASKPASS"] = str(_at(root, ASKPASS))
        return env

    # --- registries ----------------------------------------------------------------------

    def registry_auths(self) -> list[RegistryAuth]:
        return [
            RegistryAuth(
                server=s.value["server"],
                registry=registry_of_server(s.value["server"]),
                username=s.value["username"],
                password=s.value["password"],
                email=s.value.get("email"),
                secret=s.name,
            )
            for s in self._of("docker")
        ]

    def registry_auth(self, image: str) -> RegistryAuth | None:
        """The docker secret for ``image``'s registry (the first by name if several)."""
        registry = registry_of_image(image)
        return next((a for a in self.registry_auths() if a.registry == registry), None)

    def docker_config(self, image: str | None = None) -> bytes | None:
        """A Docker ``config.json`` with the credentials for ``image``'s registry (every
        registry's for None); None when there are none."""
        auths = self.registry_auths()
        if image is not None:
            wanted = registry_of_image(image)
            auths = [a for a in auths if a.registry == wanted][:1]
        if not auths:
            return None
        entries: dict[str, dict[str, str]] = {}
        for auth in auths:
            key = "https://index.docker.io/v1/" if auth.registry == DOCKER_HUB else auth.registry
            basic = base64.b64encode(f"{auth.username}:{auth.password}".encode()).decode()
            entry = {"username": auth.username, "password": auth.password, "auth": basic}
            if auth.email:
                entry["email"] = auth.email
            entries.setdefault(key, entry)
        return json.dumps({"auths": entries}, sort_keys=True).encode()


async def run_secrets(values: SecretValues, owner: str, keyring: KeyringFile | None) -> RunSecrets:
    """``owner``'s secrets, opened; ``SecretsUnavailable`` naming what cannot be."""
    stored = await values.all(owner)
    if not stored:
        return RunSecrets(owner, [])
    if keyring is None:
        raise SecretsUnavailable(
            f"{owner} has secrets ({', '.join(sorted(stored))}) and this node has no keyring to "
            "open them: its operator sets RUNPLANE_SECRETS_KEYRING_FILE"
        )
    opened = []
    for name, data in sorted(stored.items()):
        opened.append(_open(keyring, owner, name, data))
    return RunSecrets(owner, opened)


def _open(keyring: KeyringFile, owner: str, name: str, data: bytes) -> Secret:
    try:
        try:
            secret, _ = sealing.unseal(keyring.current(), owner, name, data)
        except UnknownKey:
            secret, _ = sealing.unseal(keyring.reload(), owner, name, data)  # rotated?
    except SealingError as exc:
        raise SecretsUnavailable(str(exc)) from None
    return secret


def write_files(found: RunSecrets, root: PurePosixPath) -> None:
    """Each of ``found``'s files at its path under ``root``: 0600 (the askpass script 0700),
    in directories 0700, written whole or not at all."""
    base = Path(root)
    for file in found.files(root):
        path = Path(file.path)
        base.mkdir(mode=0o700, exist_ok=True)
        for parent in reversed(path.relative_to(base).parents[:-1]):  # 0700 each, from the top
            (base / parent).mkdir(mode=0o700, exist_ok=True)
        write_private_bytes(path, file.content, file.mode)


class OwnerSecrets:
    """The ``container`` executor's provider (``services.node_agent.ranksecrets``) over the
    store's sealed values and this node's keyring. A secret that cannot be opened ends the
    rank's setup as a system failure (``SecretsUnavailable``, naming the secret)."""

    def __init__(self, values: SecretValues, keyring: KeyringFile | None) -> None:
        self.values = values
        self.keyring = keyring

    async def registry_auth(self, owner: str, image: str) -> bytes | None:
        return (await self._open(owner)).docker_config(image)

    async def rank_secrets(self, owner: str, into: Path) -> RankSecrets:
        """The owner's files written under ``into`` (the paths the rank sees, rooted there),
        each mounted read-only at the path the rank sees; the variables naming them."""
        found = await self._open(owner)
        root = PurePosixPath(into)
        await asyncio.to_thread(write_files, found, root)
        seen, written = found.files(), found.files(root)
        mounts = [(file.path, Path(here.path)) for file, here in zip(seen, written, strict=True)]
        return RankSecrets(env=found.environment(), mounts=mounts)

    async def _open(self, owner: str) -> RunSecrets:
        try:
            return await run_secrets(self.values, owner, self.keyring)
        except SecretsUnavailable as exc:
            reason = Reason(category="system", code="SecretsUnavailable", message=str(exc))
            raise SetupAborted(reason) from None
