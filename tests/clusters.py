"""A local Valkey Cluster for the tests (``services.core.valkey_cluster``): three primaries with
a replica each, the ACL file's users as the local stack has them (passwords drawn by
``services.core.passwords``, the default user off), formed by the operator; the
``valkey_cluster`` fixture (``tests/conftest.py``) holds one for the session."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from services.core import acl
from services.core.passwords import (
    REPLICATION_CONF,
    acl_path,
    password_file,
    provision,
    read_password,
)
from services.core.valkey_cluster import Layout, ValkeyCluster

if TYPE_CHECKING:
    from pathlib import Path

    from services.core.valkey import Login, ValkeyProcess

SHARDS = 3
REPLICAS = 1


@dataclass
class LocalCluster:
    """A running cluster and the passwords of its users."""

    cluster: ValkeyCluster
    secrets: Path

    @property
    def url(self) -> str:
        """A startup node: a cluster client finds the others from it."""
        return self.cluster.url

    @property
    def operator(self) -> Login:
        return acl.OPERATOR, password_file(self.secrets, acl.OPERATOR)

    @property
    def nodes(self) -> list[ValkeyProcess]:
        return self.cluster.nodes

    def login(self, user: str) -> Login:
        return user, password_file(self.secrets, user)

    def password(self, user: str) -> str:
        return read_password(password_file(self.secrets, user))


def start_cluster(directory: Path, shards: int = SHARDS, replicas: int = REPLICAS) -> LocalCluster:
    """Provision the users' passwords and the ACL file in ``directory / "secrets"``, then start
    and form a cluster in ``directory / "cluster"``."""
    secrets = directory / "secrets"
    provision(secrets)
    cluster = ValkeyCluster(
        directory / "cluster",
        Layout.new(shards, replicas),
        acl_file=acl_path(secrets),
        login=(acl.OPERATOR, password_file(secrets, acl.OPERATOR)),
        replication=(acl.REPLICATION, password_file(secrets, acl.REPLICATION)),
        replication_conf=secrets / REPLICATION_CONF,
    )
    return LocalCluster(cluster.start(), secrets)
