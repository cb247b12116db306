"""What a rank gets from its owner's secrets: the seam between an executor and whatever keeps
the secrets (an executor asks; a provider answers for one owner at a time).

- ``registry_auth(owner, image)``: a docker ``config.json`` document (``{"auths": {"host":
  {"auth": base64(user:password)}}}``) with the owner's logins for the registry of ``image``,
  or None. The ``container`` executor writes it to a file of its own (0600) for the pull only
  (``--authfile``): credentials never go on a command line, in an event or a log.
- ``rank_secrets(owner, into)``: the owner's env secrets (variables, after the run's
  ``env_variables`` and before mcli's) and mounted secrets (files the provider writes under
  ``into``, a directory of the rank only the agent reads, mounted read-only at their path in
  the container). ``into`` is removed with the rank's other files when the rank is done.

``NoSecrets``, the default, answers nothing: a node-agent without a provider pulls public
images only, and ranks get no secrets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import NamedTuple, Protocol


class RankSecrets(NamedTuple):
    env: Mapping[str, str] = {}
    #: (the path in the container, the file on this node), each mounted read-only.
    mounts: Sequence[tuple[PurePosixPath, Path]] = ()


class SecretsProvider(Protocol):
    async def registry_auth(self, owner: str, image: str) -> bytes | None: ...

    async def rank_secrets(self, owner: str, into: Path) -> RankSecrets: ...


class NoSecrets:
    async def registry_auth(self, owner: str, image: str) -> bytes | None:
        return None

    async def rank_secrets(self, owner: str, into: Path) -> RankSecrets:
        return RankSecrets()
