"""Who may do what on the log's server: one ACL user per service, and the operator.

Each service logs in as its own user (``RUNPLANE_REDIS_USERNAME``), whose rule names the
commands it runs and the keys it touches, read and write apart where that is tighter (``%R~``
read only, ``%W~`` write only, ``~`` both). The rules were found by reading each service and
by running the whole stack with them: a command or key a service needs and lacks is a NOPERM
in the server's ``ACL LOG``, which the end-to-end tests check stays empty.

Invariants:
- Pure: the rules and the ACL file's text, from the keys of ``events.keys`` (a pattern is a key
  built with ``keys.ANY``); no IO. ``services.core.passwords`` writes the files.
- The ``default`` user is off: a client that does not log in gets NOAUTH.
- The ACL file holds each password only as its SHA-256 (``#<hex>``), never in clear.
- No service may run an administrative command (``ACL``, ``CONFIG``, ``FLUSHALL``, ``DEBUG``,
  ``SHUTDOWN``, ``KEYS``, ``MONITOR``, ...), nor subscribe to any channel. The operator (the
  admin: ``mcli dev``, ``mcli projections rebuild``, the benchmarks, the tests) may do all.
  On a cluster, a service may ask where slots are (``CLUSTER SLOTS``, ...), never change it;
  the operator forms it (``services.core.valkey_cluster``), and each replica logs in to its
  primary as ``replication``, which may only replicate (no key, no other command).
- A function runs every command it calls with the caller's rights, so a writer of the log
  needs ``XADD``, ``SET``, ``GET`` and ``XLEN`` on the log's keys: the append function is the
  way to write, not a wall (a user who may append may also ``XADD`` to the log itself).
  Loading a function can replace one that others call, so one user loads each library: the
  scheduler the append function (``services/core/append.lua``, at the start of each term),
  the projector its own (``projections/commit.lua``).

Secret values (``keys.secret_values``: sealed, ``services.core.sealing``) are the API's to
write and the node-agents' to read, read only; no other service may touch them. The operator's
key rotation rewrites them with the operator's login.

What is left open, on purpose: every service consuming the global log may write to it (a
consumer group's reads are writes); a node-agent may append any run's or node's events, not
only its own node's, and read any node's inbox (one ACL user serves every agent).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from events import keys
from events.keys import ANY

SCHEDULER = "scheduler"
PROJECTOR = "projector"
LOG_COLLECTOR = "log-collector"
NODE_AGENT = "node-agent"
API = "api"
OPERATOR = "operator"
#: A cluster's replica, logging in to its primary (``masteruser``: services.core.valkey_cluster).
REPLICATION = "replication"
#: Every service's user; each node-agent logs in as ``node-agent``.
SERVICES = (SCHEDULER, PROJECTOR, LOG_COLLECTOR, NODE_AGENT, API)
USERS = (*SERVICES, OPERATOR, REPLICATION)

# --- commands ------------------------------------------------------------------------------------

#: What a cluster client (redis-py's ``RedisCluster``, FastStream's ``RedisClusterBroker``) runs
#: beside: the slots' owners (``CLUSTER SLOTS``; the others for tools), the commands' key
#: positions (``COMMAND``, ``COMMAND GETKEYS``), a slot being moved (``ASKING``) and reads from
#: replicas (``READONLY``). None changes the cluster.
_CLUSTER = (
    "cluster|slots",
    "cluster|shards",
    "cluster|nodes",
    "cluster|myid",
    "asking",
    "readonly",
    "readwrite",
    "command",
)
#: What every client runs to open and keep a connection (redis-py, FastStream, the shim), on
#: one server or a cluster.
_CONNECTION = ("auth", "hello", "ping", "client|setinfo", "client|setname", "select", *_CLUSTER)
#: On a cluster, an appender waits until replicas hold (``WAIT``) and fsynced (``WAITAOF``)
#: what it appended (``RUNPLANE_APPEND_REPLICAS``).
_REPLICATED = ("wait", "waitaof")
#: A lease (``services.core.lease``): scripts, which run GET, SET, PEXPIRE and DEL as the caller.
_LEASE = ("get", "set", "pexpire", "del", "eval", "evalsha", "script|load", "script|exists")
#: Appending (``services.core.store``: the append function's own commands) and reading
#: histories.
_APPEND = (
    *("fcall", "get", "set", "pexpire", "xlen", "xadd", "xrange", "xread"),
    *("sadd", "smembers", "del", "hget", "hdel"),  # hget, hdel: a history restored
)
#: A consumer group on a stream (``services.core.consumer``, FastStream), with its dead letters.
_CONSUME = (
    "xreadgroup",
    "xack",
    "xautoclaim",
    "xclaim",
    "xpending",
    "xgroup|create",
    "xinfo|groups",
    "xadd",
)
#: The liveness key (``services.core.health``) and its probe.
_ALIVE = ("set", "del", "pttl")


def _commands(*groups: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sorted({command for group in groups for command in group}))


# --- keys ----------------------------------------------------------------------------------------

_LOG = keys.log_stream(ANY)
#: Where the log's archive is (``services.core.archive``): read with the log by whoever replays
#: it from its start (the scheduler, the projector, the API's users and audit).
_ARCHIVED = keys.log_archive(ANY)
_INBOXES = keys.inbox(ANY, ANY)
#: The keys the append function reads and writes beside the aggregates' histories: the log,
#: the idempotency keys and the runs' told nodes (``events.inbox``); it only writes the nodes'
#: inboxes (``_APPENDED_TO``). Every writer of the log has both.
#: The partition's counts of retired histories (``services.core.archiver``): read by the
#: append function (a key named in FCALL needs both rights) and by every reader of histories,
#: written by the archiver.
_RETIRED = keys.retired(ANY)
_APPENDING = (_LOG, keys.idempotency_key(ANY, ANY), keys.told_nodes(ANY, ANY), _RETIRED)
#: The number of partitions the log was made with: read by every process that appends to or
#: reads it (``services.core.partitions``), recorded by the scheduler.
_RECORDED_P = keys.log_partitions()
_APPENDED_TO = (_INBOXES,)


def _history(kind: str) -> str:
    return keys.aggregate_stream(f"{kind}:{ANY}", ANY)


def _alive(service: str) -> str:
    return keys.liveness(service, ANY)


_PROJECTIONS = keys.projection_keys() + ANY
_OUTPUT = keys.output_keys() + ANY


@dataclass(frozen=True)
class Rule:
    """One user's rights: commands, and key patterns read and written (``both``), only read
    (``reads``) or only written (``writes``)."""

    commands: tuple[str, ...]
    both: tuple[str, ...] = ()
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()

    def words(self) -> list[str]:
        """The rule as ACL SETUSER words, after the user's name, state and password."""
        return [
            "resetkeys",
            "resetchannels",
            "-@all",
            *(f"+{command}" for command in self.commands),
            *(f"~{pattern}" for pattern in self.both),
            *(f"%R~{pattern}" for pattern in self.reads),
            *(f"%W~{pattern}" for pattern in self.writes),
        ]


RULES: dict[str, Rule] = {
    # The queue and placement: reads the whole log, run and node histories; appends run and node
    # events under its lease (the fence), watches the heartbeats, loads the append function.
    SCHEDULER: Rule(
        commands=_commands(
            _CONNECTION,
            _LEASE,
            _APPEND,
            _REPLICATED,
            _CONSUME,
            _ALIVE,
            ("xinfo|consumers", "xgroup|delconsumer", "exists", "time", "function|load"),
            ("incr",),  # its term (services.scheduler.fences)
        ),
        both=(
            *_APPENDING,
            _history("run"),
            _history("node"),
            keys.scheduler_lease(ANY),
            keys.scheduler_term(),
            _RECORDED_P,
            _alive(SCHEDULER),
        ),
        reads=(keys.heartbeat(ANY), _ARCHIVED),
        writes=(keys.dead_letter_stream(SCHEDULER), *_APPENDED_TO),
    ),
    # The read models: folds the log into projection keys (its own namespace, its lease among
    # them) through its own function; appends nothing.
    PROJECTOR: Rule(
        commands=_commands(
            _CONNECTION,
            _LEASE,
            _CONSUME,
            _ALIVE,
            ("xrange", "xgroup|setid", "fcall", "function|load", "scan", "unlink"),
            ("hset", "hdel", "zadd", "zrem"),
            ("hget",),  # a run at rest back from its rows (projections.runner.Runner.restore)
            ("xrevrange",),  # the log's newest entry: the projections' lag (their metrics)
            # The rows of archived runs to Parquet (services.projector.cooling): the oldest
            # runs, whether their streams went, where the archive is, whether a run is cold,
            # the cold rows' place.
            ("zrangebyscore", "exists", "hmget", "get", "set"),
        ),
        # A cooled run's reserved name goes (runplane_forget_name): the cold rows hold it.
        both=(_LOG, _PROJECTIONS, _alive(PROJECTOR), keys.run_name(ANY)),
        reads=(_ARCHIVED, _RECORDED_P, _history("run")),
        writes=(keys.dead_letter_stream(PROJECTOR),),
    ),
    # Run output: the ingest stream and every rank's lines, their archive queue and requests
    # (all under ``rp:logs:``), and the log for the attempts' ends; appends nothing.
    LOG_COLLECTOR: Rule(
        commands=_commands(
            _CONNECTION,
            _LEASE,
            _REPLICATED,
            _CONSUME,
            _ALIVE,
            ("xrange", "xrevrange", "xtrim", "hget", "hmget", "hset", "hincrby", "hkeys"),
            ("hscan", "hdel"),  # a former version's records of retired histories, to the index
            ("hgetall",),  # an attempt's output hash, whole, on its way to meta.json
            ("zadd", "zrem", "zrange", "zscore", "exists", "unlink"),
            ("rpush", "blpop", "lpop", "llen", "expire"),
            ("time",),  # the log's clock: RUNPLANE_RETAIN's cut-off
            ("fcall",),  # a run's stream retired (runplane_retire2)
            ("scan",),  # the nodes' inboxes, to trim
        ),
        # With RUNPLANE_RETAIN, it archives the log (services.core.archiver): reads what the
        # groups and projections are done with, sets the archive's pointer, trims the log,
        # retires the histories of runs at rest that the archive holds, trims the inboxes.
        both=(
            *(_LOG, _OUTPUT, _ARCHIVED, _RETIRED, _history("run"), _INBOXES),
            _alive(LOG_COLLECTOR),
        ),
        reads=(_RECORDED_P, _PROJECTIONS),
        writes=(keys.dead_letter_stream(LOG_COLLECTOR),),
    ),
    # A node: its heartbeat, its ranks' events (the log, run and node histories), and its
    # ranks' output into the ingest stream, which it never reads; it reads (only) the sealed
    # secrets of its runs' owners.
    NODE_AGENT: Rule(
        commands=_commands(_CONNECTION, _APPEND, _REPLICATED, _CONSUME, ("pttl", "hgetall")),
        both=(
            *_APPENDING,
            _history("run"),
            _history("node"),
            _INBOXES,  # its own, read through its group; the others' written by its appends
            keys.heartbeat(ANY),
        ),
        reads=(keys.secret_values(ANY), _RECORDED_P, _ARCHIVED),
        writes=(keys.log_ingest(), keys.dead_letter_stream(f"agent:{ANY}")),
    ),
    # The front door: users and keys (user histories), submissions (names), requests on runs;
    # reads the read models and run output, and asks a log-collector for archived output;
    # stores users' sealed secrets (a value replaced or removed under WATCH).
    API: Rule(
        commands=_commands(
            _CONNECTION,
            _APPEND,
            _REPLICATED,
            _ALIVE,
            ("hget", "hmget", "hscan", "hkeys", "zrange", "zrangebyscore", "zrevrangebyscore"),
            ("xrevrange", "xinfo|groups", "xpending", "rpush", "blpop", "del", "exists"),
            ("hset", "hdel", "hgetall", "watch", "unwatch", "multi", "exec", "discard"),
        ),
        both=(
            *_APPENDING,
            _history("run"),
            _history("user"),
            _history("node"),  # an admin's cordon, drain, uncordon
            keys.run_name(ANY),
            keys.log_reply(ANY),
            keys.secret_values(ANY),
            _alive(API),
        ),
        reads=(_PROJECTIONS, _OUTPUT, _ARCHIVED, _RECORDED_P),
        writes=(keys.log_requests(), *_APPENDED_TO),
    ),
}

#: A replica's login to its primary: the replication handshake and stream, no key.
REPLICATION_RULE = Rule(commands=("ping", "psync", "replconf"))
#: The admin: every command, key and channel.
OPERATOR_WORDS = ["~*", "&*", "+@all"]
#: The user a client that does not log in would be: none.
DEFAULT_LINE = "user default off resetkeys resetchannels -@all"


def loads_append_function(user: str | None) -> bool:
    """Whether ``user`` loads the append function on a server without it: the scheduler, and
    whoever is not a service nor a replica (the operator, a login of a deployment's own); a
    service waits for the scheduler to."""
    return user == SCHEDULER or user not in (*SERVICES, REPLICATION)


def password_hash(password: str) -> str:
    """The SHA-256 of a password, in hex, as the ACL file holds it (after ``#``)."""
    return hashlib.sha256(password.encode()).hexdigest()


def user_line(user: str, password_hash_hex: str) -> str:
    """One line of the ACL file: ``user``, on, its password's hash, its rule."""
    if user == OPERATOR:
        words = OPERATOR_WORDS
    elif user == REPLICATION:
        words = REPLICATION_RULE.words()
    else:
        words = RULES[user].words()
    return " ".join(["user", user, "on", f"#{password_hash_hex}", *words])


def acl_file(hashes: dict[str, str]) -> str:
    """The ACL file: the default user off, then each user of ``hashes`` (name -> the SHA-256
    of its password)."""
    unknown = sorted(set(hashes) - set(USERS))
    if unknown:
        raise ValueError(f"no ACL rule for {', '.join(unknown)}")
    lines = [DEFAULT_LINE, *(user_line(user, hashes[user]) for user in USERS if user in hashes)]
    return "\n".join(lines) + "\n"
