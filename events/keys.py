"""Every Redis key and stream name runplane uses, built here and nowhere else.

The log is split into partitions; a run's keys carry its partition as a hash tag
(``{p3}``), so its own stream, the partition's global stream and its idempotency keys share
one Cluster slot and one script can write them together. With one partition (the default) the
global stream is a total order of every event.

A pattern of keys for the server's ACL (``services.core.acl``) is built by the same functions,
with ``ANY`` in place of a name or a partition: ``aggregate_stream("run:" + ANY, ANY)``.
"""

from __future__ import annotations

import hashlib
import zlib

PREFIX = "rp"
#: Any name or partition, in a key pattern (a glob: ``{`` and ``}`` stand for themselves).
ANY = "*"


#: The most partitions a log may have (``RUNPLANE_PARTITIONS``).
MAX_PARTITIONS = 1024


def partition_of(aggregate: str, partitions: int) -> int:
    """The partition of an aggregate (``run:<id>``, ``node:<name>`` or ``user:<name>``, a user
    and their API keys); stable forever."""
    return zlib.crc32(aggregate.encode()) % partitions if partitions > 1 else 0


def log_stream(partition: int | str) -> str:
    """The global stream of one partition: every event of its aggregates, in order."""
    return f"{PREFIX}:{{p{partition}}}:log"


def log_partitions() -> str:
    """The number of partitions the log was made with (``services.core.partitions``)."""
    return f"{PREFIX}:partitions"


def aggregate_stream(aggregate: str, partition: int | str) -> str:
    """The history of one run, node or user (``Event.aggregate``)."""
    return f"{PREFIX}:{{p{partition}}}:agg:{aggregate}"


def log_archive(partition: int | str) -> str:
    """Where a partition's global stream was archived and up to which position it may be
    trimmed (``services.core.archive.Pointer``): set before every trim, read with the stream."""
    return f"{PREFIX}:{{p{partition}}}:archived"


def retired(partition: int | str) -> str:
    """The partition's retirements: a hash of counts, one per bucket of aggregates
    (``retirement_bucket``), each raised when the archiver retires a history of its bucket (its
    stream goes, ``runplane_retire2``). Where a history went is in the archive's index
    (``services.core.retired``), so the server keeps nothing per retired run; a count tells a
    writer or reader to look there, and fences a restore or a new stream against a retirement
    between its look and its write. A field named after a stream is a former version's record
    of that history (its version and segments), read as before until the archiver moves it to
    the index."""
    return f"{PREFIX}:{{p{partition}}}:retired"


#: How many buckets the retirements count in (the hex digits of a stream's hash they take):
#: 4,096 counts at most a partition, whatever the number of runs.
_BUCKET_DIGITS = 3


def retirement_bucket(stream: str) -> str:
    """The field of ``retired`` that counts the retirements of ``stream``'s bucket."""
    return "#" + hashlib.sha1(stream.encode(), usedforsecurity=False).hexdigest()[:_BUCKET_DIGITS]


def idempotency_key(key: str, partition: int | str) -> str:
    return f"{PREFIX}:{{p{partition}}}:idem:{key}"


def inbox(node: str, partition: int | str) -> str:
    """What one node's agent is told from one partition: a copy of every event of the runs with
    a rank on it (from their placement to their attempt's end) and of the node itself, under
    the id it has on the partition's global stream (``events.inbox``)."""
    return f"{inbox_prefix(partition)}{node}"


def inbox_prefix(partition: int | str) -> str:
    """What every inbox of a partition starts with (the append function adds the node)."""
    return f"{PREFIX}:{{p{partition}}}:inbox:"


def told_nodes(aggregate: str, partition: int | str) -> str:
    """The set of nodes whose inboxes get a run's events: its latest attempt's, while it holds
    them (``events.inbox``)."""
    return f"{PREFIX}:{{p{partition}}}:tell:{aggregate}"


def dead_letter_stream(group: str) -> str:
    """Entries a consumer group could not decode, each with the error and where it was."""
    return f"{PREFIX}:dlq:{group}"


def scheduler_lease(partition: int | str = 0) -> str:
    """The fence of the scheduler's appends to one partition: partition 0's is the lease the
    active scheduler holds (its value the token), each other's holds the latest term's
    ``<term>/<token>`` (``services.scheduler.fences``)."""
    return f"{PREFIX}:{{p{partition}}}:scheduler:lease"


def scheduler_term() -> str:
    """The last term number drawn by an elected scheduler (beside the lease, in its slot)."""
    return f"{PREFIX}:{{p0}}:scheduler:term"


def heartbeat(node: str) -> str:
    """Exists while the node's agent is alive (it renews it with an expiry)."""
    return f"{PREFIX}:hb:{node}"


def liveness(service: str, instance: str) -> str:
    """Exists while that service process's event loop runs (renewed with an expiry): what its
    container's health check probes. A node-agent's is its ``heartbeat`` key instead."""
    return f"{PREFIX}:alive:{service}:{instance}"


def output_keys() -> str:
    """What every key of run output starts with (the log-collector's own)."""
    return f"{PREFIX}:logs:"


def log_ingest() -> str:
    """Output lines from every rank, on their way to the log-collector."""
    return f"{output_keys()}in"


def rank_log(run_id: str, attempt: int, rank: int) -> str:
    """The stored output of one rank of one attempt (until it is archived)."""
    return f"{output_keys()}{run_id}:{attempt}:{rank}"


def attempt_logs(run_id: str, attempt: int) -> str:
    """What the log-collector knows of an attempt's output: ranks seen, first failed rank,
    archive paths."""
    return f"{output_keys()}{run_id}:{attempt}:meta"


# Projections: every key carries the hash tag ``{proj}``, so the projector's one transaction
# (rows of several projections and their checkpoints) stays in one slot on a Cluster too.
# A namespace is one build of a projection (``v3``, or ``v3r<ms>`` for a rebuild).


def projection_keys() -> str:
    """What every key of the projections (and the projector's lease) starts with."""
    return f"{PREFIX}:{{proj}}:"


def projector_lease() -> str:
    """The projector's lease: one projector folds and commits, the others stand by."""
    return f"{projection_keys()}projector:lease"


def projection_prefix(name: str, namespace: str) -> str:
    """Every key of one build of a projection starts with this (to drop a whole build)."""
    return f"{projection_keys()}{name}:{namespace}:"


def projection_rows(name: str, namespace: str, kind: str) -> str:
    """A hash of one kind of rows of a projection build: row id -> JSON."""
    return f"{projection_prefix(name, namespace)}rows:{kind}"


def projection_index(name: str, namespace: str, index: str) -> str:
    """A listing index of a projection build: a sorted set of row ids, scored by time."""
    return f"{projection_prefix(name, namespace)}idx:{index}"


def projection_checkpoint(name: str, namespace: str) -> str:
    """The last log position of each partition folded into a projection build (written with
    its rows): ``<p0>,<p1>,...`` (``projections.base.format_checkpoint``)."""
    return f"{projection_prefix(name, namespace)}checkpoint"


def projection_memory(name: str, namespace: str) -> str:
    """A hash: a build's fold memory, written down at its checkpoint when the projector stops
    cleanly (``projections.runner.Runner.keep_memory``), taken up by the next start."""
    return f"{projection_prefix(name, namespace)}memory"


def projection_active(name: str) -> str:
    """The namespace readers of a projection read; switched when a new build caught up."""
    return f"{projection_keys()}{name}:active"


def cold_rows() -> str:
    """The directory holding the projection rows of archived runs (``projections.cold``),
    as the projector that moved them sees it: readers take a run Valkey lacks from there."""
    return f"{projection_keys()}cold"


def log_collector_lease() -> str:
    """Held by the log-collector that copies the ingest stream (one at a time keeps each rank's
    lines in id order); its value is that collector's name."""
    return f"{output_keys()}lease"


def log_archive_queue() -> str:
    """Sorted set of finished attempts (``<run_id>/<attempt>``) waiting to be archived, scored by
    the millisecond part of their terminal event's position."""
    return f"{output_keys()}archive-queue"


def log_meta_queue() -> str:
    """Sorted set of archived attempts (``<run_id>/<attempt>``) whose hash (``attempt_logs``)
    waits to move to a file once the event archive holds their terminal event, scored by the
    millisecond part of that event's position."""
    return f"{output_keys()}meta-queue"


def log_meta_moved() -> str:
    """Set once the first attempt hash moved to its file: until then a reader that finds no
    hash knows the attempt has none yet, and asks no log-collector for a file."""
    return f"{output_keys()}meta-moved"


def log_requests() -> str:
    """List of requests for archived lines, served by any log-collector."""
    return f"{output_keys()}requests"


def log_reply(request_id: str) -> str:
    """List the log-collector pushes one request's reply chunks to (it expires)."""
    return f"{output_keys()}reply:{request_id}"


def run_name(name: str) -> str:
    """The run id of a run name; names are unique (set once, at submission)."""
    return f"{PREFIX}:names:{name}"


def secret_values(owner: str) -> str:
    """A hash of ``owner``'s secrets: name -> the sealed value (``services.core.sealing``). The
    API writes it; node-agents read it to deliver the owner's secrets to their runs; no other
    service may touch it (``services.core.acl``)."""
    return f"{PREFIX}:secrets:{owner}"
