"""Names and labels of the containers a node-agent runs.

Invariants:
- A container's name is a function of its rank's key (and, for an integration, its index)
  only, so running it twice (a retried call, a restarted agent) finds the first one ("name
  already in use"): there is never a duplicate container for a rank.
- Labels carry the exact values (an engine's labels take any string); ``key_of`` reads a
  rank's key back from them, and ``node_filters`` selects the containers of one node-agent: an
  agent lists, adopts and removes only its own. The label keys are the kubernetes executor's.

Pure: no IO.
"""

from __future__ import annotations

from collections.abc import Mapping

from services.node_agent.job import RankJob, RankKey
from services.node_agent.kube.naming import (
    ACTOR,
    ATTEMPT,
    MANAGED_BY,
    MANAGER,
    NODE,
    PREFIX,
    RANK,
    RUN_ID,
    RUN_NAME,
    dns_label,
)

ROLE = PREFIX + "role"
INTEGRATION = PREFIX + "integration"
ROLE_RANK = "rank"  # the command's container
ROLE_INTEGRATION = "integration"


def container_name(key: RankKey) -> str:
    """The command's container (a DNS label: also what its log lines are filed under)."""
    return dns_label(f"rp-{key.run_id}-{key.attempt}-{key.rank}")


def integration_name(key: RankKey, index: int) -> str:
    return f"{container_name(key)}-integration-{index}"


def labels(job: RankJob, node: str, actor: str) -> dict[str, str]:
    """The labels of the command's container."""
    return {
        MANAGED_BY: MANAGER,
        RUN_ID: job.run_id,
        RUN_NAME: job.run_name,
        ATTEMPT: str(job.attempt),
        RANK: str(job.rank),
        NODE: node,
        ACTOR: actor,
        ROLE: ROLE_RANK,
    }


def integration_labels(job: RankJob, node: str, actor: str, index: int) -> dict[str, str]:
    return labels(job, node, actor) | {ROLE: ROLE_INTEGRATION, INTEGRATION: str(index)}


def node_filters(node: str) -> list[str]:
    """``--filter`` values that select one node-agent's containers (all must match)."""
    return [f"label={MANAGED_BY}={MANAGER}", f"label={NODE}={node}"]


def rank_filters(node: str, key: RankKey) -> list[str]:
    """``--filter`` values that select every container of one rank (integrations included)."""
    return [
        *node_filters(node),
        f"label={RUN_ID}={key.run_id}",
        f"label={ATTEMPT}={key.attempt}",
        f"label={RANK}={key.rank}",
    ]


def key_of(container_labels: Mapping[str, str] | None) -> RankKey | None:
    """The rank a container runs, from its labels; None for a container that is not one."""
    found = container_labels or {}
    try:
        return RankKey(str(found[RUN_ID]), int(found[ATTEMPT]), int(found[RANK]))
    except (KeyError, TypeError, ValueError):
        return None


def is_rank(container_labels: Mapping[str, str] | None) -> bool:
    """A command's container (not an integration's)."""
    return (container_labels or {}).get(ROLE) == ROLE_RANK
