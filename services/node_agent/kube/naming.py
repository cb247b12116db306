"""Names, labels and annotations of the objects a node-agent creates in Kubernetes.

Invariants:
- A Pod's name is a function of its rank's key (run id, attempt, rank) only, so creating it
  twice (a retried request, a restarted agent) finds the first one (409 Conflict): there is
  never a duplicate Pod for a rank. It is a DNS label (at most 63 characters), because it is
  also the Pod's ``hostname`` in the attempt's headless Service.
- Labels carry values Kubernetes accepts (sanitized); the exact values (run id, node) are in
  annotations, and ``key_of`` reads a rank's key back from those only.
- ``runplane.dev/node`` selects the Pods of one node-agent: an agent lists, watches and adopts
  only its own.

Pure: no IO.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping
from typing import Any

from services.node_agent.job import RankKey

PREFIX = "runplane.dev/"
RUN_ID = PREFIX + "run-id"
RUN_NAME = PREFIX + "run-name"
ATTEMPT = PREFIX + "attempt"
RANK = PREFIX + "rank"
NODE = PREFIX + "node"
ACTOR = PREFIX + "node-agent"
PARAMETERS = PREFIX + "parameters"
MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "runplane"

_LABEL_MAX = 63
_NOT_LABEL = re.compile(r"[^a-z0-9-]+")
_NOT_VALUE = re.compile(r"[^A-Za-z0-9_.-]+")


def dns_label(text: str) -> str:
    """``text`` as an RFC 1123 label: lower-case alphanumerics and '-', at most 63 long, an
    alphanumeric at each end. An altered name gets a checksum of the original, so two names
    never meet in one label."""
    label = _NOT_LABEL.sub("-", text.lower()).strip("-")
    return label if label == text and len(label) <= _LABEL_MAX else _with_sum(label, text, "-")


def _with_sum(cleaned: str, text: str, strip: str) -> str:
    suffix = f"{zlib.crc32(text.encode()):08x}"
    head = cleaned[: _LABEL_MAX - len(suffix) - 1].strip(strip)
    return f"{head}-{suffix}" if head else suffix


def label_value(text: str) -> str:
    """``text`` as a label value (at most 63 of ``[A-Za-z0-9_.-]``, alphanumeric at the ends)."""
    value = _NOT_VALUE.sub("-", text).strip("-_.")
    return value if value == text and len(value) <= _LABEL_MAX else _with_sum(value, text, "-_.")


def pod_name(key: RankKey) -> str:
    return dns_label(f"rp-{key.run_id}-{key.attempt}-{key.rank}")


def token_secret_name(key: RankKey) -> str:
    """The Secret that holds a rank's run token (owned by its Pod)."""
    return f"{pod_name(key)}-token"


def service_name(run_id: str, attempt: int) -> str:
    return dns_label(f"rp-{run_id}-{attempt}")


def master_addr(run_id: str, attempt: int, namespace: str) -> str:
    """The DNS name of rank 0's Pod: ``<hostname>.<subdomain>.<namespace>.svc``. Without the
    cluster domain, the Pod's resolver search list completes it, whatever the domain is."""
    rank0 = pod_name(RankKey(run_id, attempt, 0))
    return f"{rank0}.{service_name(run_id, attempt)}.{namespace}.svc"


def node_selector(node: str) -> str:
    """The label selector of one node-agent's Pods."""
    return f"{MANAGED_BY}={MANAGER},{NODE}={label_value(node)}"


def attempt_labels(run_id: str, run_name: str, attempt: int, node: str) -> dict[str, str]:
    return {
        MANAGED_BY: MANAGER,
        RUN_ID: label_value(run_id),
        RUN_NAME: label_value(run_name),
        ATTEMPT: str(attempt),
        NODE: label_value(node),
    }


def key_of(metadata: Mapping[str, Any]) -> RankKey | None:
    """The rank a Pod runs, from its annotations; None for a Pod that is not a rank's."""
    annotations = metadata.get("annotations") or {}
    try:
        return RankKey(str(annotations[RUN_ID]), int(annotations[ATTEMPT]), int(annotations[RANK]))
    except (KeyError, TypeError, ValueError):
        return None
