"""Every Redis key and stream name runplane uses, built here and nowhere else.

The log is split into partitions; a run's keys carry its partition as a hash tag
(``{p3}``), so its own stream, the partition's global stream and its idempotency keys share
one Cluster slot and one script can write them together. With one partition (the default) the
global stream is a total order of every event.
"""

from __future__ import annotations

import zlib

PREFIX = "rp"


def partition_of(aggregate: str, partitions: int) -> int:
    """The partition of an aggregate (``run:<id>`` or ``node:<name>``); stable forever."""
    return zlib.crc32(aggregate.encode()) % partitions if partitions > 1 else 0


def log_stream(partition: int) -> str:
    """The global stream of one partition: every event of its aggregates, in order."""
    return f"{PREFIX}:{{p{partition}}}:log"


def aggregate_stream(aggregate: str, partition: int) -> str:
    """The history of one run or node."""
    return f"{PREFIX}:{{p{partition}}}:agg:{aggregate}"


def idempotency_key(key: str, partition: int) -> str:
    return f"{PREFIX}:{{p{partition}}}:idem:{key}"


def dead_letter_stream(group: str) -> str:
    """Entries a consumer group could not decode, each with the error and where it was."""
    return f"{PREFIX}:dlq:{group}"


def scheduler_lease(partition: int = 0) -> str:
    """Held by the active scheduler; its value is the fencing token its appends carry."""
    return f"{PREFIX}:{{p{partition}}}:scheduler:lease"


def heartbeat(node: str) -> str:
    """Exists while the node's agent is alive (it renews it with an expiry)."""
    return f"{PREFIX}:hb:{node}"


def log_ingest() -> str:
    """Output lines from every rank, on their way to the log-collector."""
    return f"{PREFIX}:logs:in"


def rank_log(run_id: str, attempt: int, rank: int) -> str:
    """The stored output of one rank of one attempt (until it is archived)."""
    return f"{PREFIX}:logs:{run_id}:{attempt}:{rank}"


def attempt_logs(run_id: str, attempt: int) -> str:
    """What the log-collector knows of an attempt's output: ranks seen, first failed rank,
    archive paths."""
    return f"{PREFIX}:logs:{run_id}:{attempt}:meta"
