"""The liveness timeouts of a node and their order: the one place their numbers live.

A node is declared lost (``node.lost``) once its heartbeat key, which its agent sets with an
expiry of ``heartbeat_ttl_s``, is missing when the scheduler looks (no sooner than
``node_timeout_s`` after the node registered or the scheduler became active). A retry of the
node's attempts can only be placed after that. Fencing (docs/fencing.md) makes a node's ranks
stop on their own once their agent has been silent for ``fence_timeout_s``: SIGTERM, then
SIGKILL ``fence_grace_s`` later. The guarantee "at most one live attempt per run" holds when

    fence_timeout_s + FENCE_POLL_S + fence_grace_s < heartbeat_ttl_s

because the lease the ranks watch is renewed no later than the heartbeat key it stands for
(``check_order``). The scheduler's and the agent's settings live in different processes; the
agent checks its own (the heartbeat expiry is the agent's setting), the defaults below keep the
order, and both derive the fence's defaults from the expiry with these fractions.
"""

from __future__ import annotations

HEARTBEAT_TTL_S = 10.0  # the agent's heartbeat key expiry: silent this long, the node is lost
NODE_TIMEOUT_S = 10.0  # the scheduler's grace after a registration (or its own start)
FENCE_TIMEOUT_SHARE = 0.5  # default fence timeout, as a share of the heartbeat expiry
FENCE_GRACE_SHARE = 0.2  # default SIGTERM-to-SIGKILL grace of a fenced rank, likewise
FENCE_POLL_S = 0.25  # longest time between two looks of a shim at its lease
SILENT_SHARE = 0.55  # this share of the watched nodes silent at once: a shared outage


def fence_timeout_default(heartbeat_ttl_s: float) -> float:
    return heartbeat_ttl_s * FENCE_TIMEOUT_SHARE


def fence_grace_default(heartbeat_ttl_s: float) -> float:
    return heartbeat_ttl_s * FENCE_GRACE_SHARE


def fence_poll_s(fence_timeout_s: float) -> float:
    return min(FENCE_POLL_S, fence_timeout_s / 10)


def check_order(fence_timeout_s: float, fence_grace_s: float, heartbeat_ttl_s: float) -> None:
    """Raise ``ValueError`` unless a fenced rank is dead before its node can be declared lost."""
    deadline = fence_timeout_s + fence_poll_s(fence_timeout_s) + fence_grace_s
    if deadline >= heartbeat_ttl_s:
        raise ValueError(
            f"fence_timeout_s ({fence_timeout_s:g}) + the lease poll "
            f"({fence_poll_s(fence_timeout_s):g}) + fence_grace_s ({fence_grace_s:g}) must be "
            f"less than heartbeat_ttl_s ({heartbeat_ttl_s:g}): a retry could start beside a "
            "rank that is still alive (docs/fencing.md); lower the fence or raise the expiry"
        )
