"""The read models as MAPI's objects (``reference/mapi.md`` section 6): Run, its resumptions,
lifecycle, nodes and events; clusters and their utilization.

Pure: rows in, JSON-ready dicts out, keyed by the schema's field names (ariadne's default
resolvers read them). Every datetime is ISO 8601 in UTC with its offset; statuses and run types
are upper-case names; lists the client indexes are never empty or null (a run's resumptions,
which the attempts' rows may lag, fall back to the one the run asked for). And runplane's own
wire types, which the CLI shares: a listing's selection, a recorded event as it crosses.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final, cast

import msgspec

from events import codec, secrets
from events.codec import Recorded
from events.model import SecretType, redacted
from events.secrets import Secret
from events.spec import RunSpec
from events.status import RunStatus
from projections.attempts import AttemptRow
from projections.run_status import RunRow
from projections.utilization import Instance, RunLine
from services.api.errors import BadRequest

RUN_TYPE = "TRAINING"
PROVIDER = "RUNPLANE"
SUBMISSION_TYPES = ["TRAINING"]
Json = dict[str, Any]


def iso(ms: int | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat()


def view(row: RunRow, attempts: Sequence[AttemptRow]) -> Json:
    """runplane's own shape of a run: the projector's row and attempts, as JSON."""
    return cast(Json, msgspec.to_builtins({"row": row, "attempts": list(attempts)}))


def run(row: RunRow, attempts: Sequence[AttemptRow]) -> Json:
    """A Run with every field of section 6.1 (``details`` too: the client selects it or not)."""
    max_duration = row.max_duration
    latest = attempts[-1] if attempts else None
    return {
        "id": row.run_uid,
        "name": row.name,
        "status": row.status.value,
        "createdAt": iso(row.created_at),
        "updatedAt": iso(row.updated_at),
        "reason": str(row.reason) if row.reason is not None else None,
        "createdByEmail": row.created_by,
        "priority": row.priority.upper(),
        "maxRetries": row.max_retries,
        "preemptible": row.preemptible,
        "retryOnSystemFailure": row.retry_on_system_failure,
        "maxDurationSeconds": None if max_duration is None else max_duration * 3600,
        "isDeleted": row.is_deleted,
        "runType": RUN_TYPE,
        "resumptions": resumptions(row, attempts),
        "view": lambda *_: view(row, attempts),  # resolved only when asked for
        "details": {
            "image": row.image,
            "originalRunInput": run_input(row.submitted_config),
            "metadata": dict(row.metadata),
            "lastExecutionId": f"{row.run_uid}-{latest.index}" if latest is not None else None,
            "lifecycle": lifecycle(row, attempts),
            "nodes": [
                {
                    "rank": r.rank,
                    "name": r.node,
                    "status": r.status.value,
                    "reason": r.reason or None,
                }
                for r in (latest.ranks if latest is not None else [])
            ],
            "formattedRunEvents": [
                {
                    "resumptionIndex": line.attempt,
                    "eventType": "STARTED",
                    "eventTime": iso(line.time or row.created_at),
                    "eventMessage": line.text,
                }
                for attempt in attempts
                for line in attempt.events
            ],
        },
    }


def resumptions(row: RunRow, attempts: Sequence[AttemptRow]) -> list[Json]:
    """One per attempt, ascending; the requested shape where an attempt is not placed yet."""
    asked = row.submitted_config.compute
    if not attempts:  # the attempts' rows lag the run's: show what was asked
        return [
            _resumption(
                index=0,
                cluster=asked.cluster,
                gpus=asked.gpus,
                gpu_type=asked.gpu_type,
                nodes=asked.nodes or 1,
                row=row,
            )
            | {"status": row.status.value, "startTime": None, "endTime": None, "reason": None}
        ]
    found = []
    for attempt in attempts:
        shaped = attempt.node_count > 0  # placed, or queued with the shape the scheduler judged
        found.append(
            _resumption(
                index=attempt.index,
                cluster=attempt.cluster or asked.cluster,
                gpus=attempt.gpus if shaped else asked.gpus,
                gpu_type=attempt.gpu_type if shaped else asked.gpu_type,
                nodes=attempt.node_count if shaped else asked.nodes or 1,
                row=row,
            )
            | {
                "status": attempt.status.value,
                "startTime": iso(attempt.started_at),
                "endTime": iso(attempt.ended_at),
                "reason": attempt.reason_text or None,
            }
        )
    return found


def _resumption(
    *, index: int, cluster: str, gpus: int, gpu_type: str | None, nodes: int, row: RunRow
) -> Json:
    return {
        "executionIndex": index,
        "clusterName": cluster,
        "gpus": gpus,
        "cpus": row.cpus,
        "gpuType": gpu_type or "None",  # MAPI's name for a CPU-only run
        "nodes": nodes,
        "estimatedEndTime": None,
    }


def lifecycle(row: RunRow, attempts: Sequence[AttemptRow]) -> list[Json]:
    """One entry per execution (its current status), as ``mcli logs`` indexes it."""
    if not attempts:
        return [
            {
                "executionIndex": 0,
                "status": row.status.value,
                "startTime": iso(row.created_at),
                "endTime": None,
                "reason": None,
            }
        ]
    return [
        {
            "executionIndex": a.index,
            "status": a.status.value,
            "startTime": iso(a.started_at if a.started_at is not None else a.opened_at),
            "endTime": iso(a.ended_at),
            "reason": (a.reason.code if a.reason is not None else None),
        }
        for a in attempts
    ]


def run_input(spec: RunSpec) -> Json:
    """The submitted config in ``runInput``'s camelCase shape (section 5.2)."""
    compute = msgspec.to_builtins(spec.compute)
    scheduling = spec.scheduling
    return {
        "runName": spec.name,
        "image": spec.image,
        "command": spec.command,
        "compute": {_camel(k): v for k, v in compute.items()},
        "scheduling": {
            "priority": scheduling.priority,
            "preemptible": scheduling.preemptible,
            "maxRetries": scheduling.max_retries,
            "retryOnSystemFailure": scheduling.retry_on_system_failure,
            **({"maxDuration": scheduling.max_duration} if scheduling.max_duration else {}),
        },
        "integrations": [
            {
                "type": i.get("integration_type"),
                "params": {_camel(k): v for k, v in i.items() if k != "integration_type"},
            }
            for i in spec.integrations
        ],
        "envVariables": [{"envKey": k, "envValue": v} for k, v in spec.env_variables.items()],
        "parameters": dict(spec.parameters),
        "metadata": dict(spec.metadata),
    }


#: runInput's required fields, as the real client names them in ``Bad run request`` errors.
_REQUIRED = ("runName", "image", "command")
#: runInput keys that stand for nothing here when empty (the client always sends them).
_EMPTY_OK = {"cpus": 0, "dependentDeployment": {}, "parentName": None}
#: Deprecated top-level fields the client still sends when a YAML uses them.
_TOP_COMPUTE = {"cluster": "cluster", "gpuType": "gpu_type", "gpuNum": "gpus"}


def parent_of_input(run_input: Json) -> str | None:
    """The run a ``runInput`` says it is submitted from (``parentName``), if any."""
    parent = run_input.get("parentName")
    if parent is not None and (not isinstance(parent, str) or not parent.strip()):
        raise BadRequest("Bad run request: parentName must be the name of a run")
    return None if parent is None else parent.strip()


def config_of_input(run_input: Json) -> Json:
    """``runInput`` (section 5.2, camelCase) as the run fields of a YAML (``events.config``),
    which validates them. ``BadRequest`` for a missing required field, in the words the client
    turns into its own message, and for what runplane does not carry out."""
    missing = [key for key in _REQUIRED if not run_input.get(key)]
    if missing:
        raise BadRequest(
            "Bad run request: " + ", ".join(f"{key} is a required field" for key in missing)
        )
    fields = dict(run_input)
    for key, empty in _EMPTY_OK.items():
        if key in fields and fields[key] == empty:
            del fields[key]
    fields.pop("parentName", None)  # not a run field: ``parent_of_input``
    if fields.get("dependentDeployment"):
        raise BadRequest("runInput.dependentDeployment: deployments are not supported here")
    compute = {_snake(k): v for k, v in _mapping(fields.pop("compute", None), "compute").items()}
    for key, name in _TOP_COMPUTE.items():
        if key in fields:
            compute.setdefault(name, fields.pop(key))
    if "cpus" in fields:
        compute.setdefault("cpus", fields.pop("cpus"))
    scheduling = _mapping(fields.pop("scheduling", None), "scheduling")
    config: Json = {
        "name": fields.pop("runName"),
        "compute": compute,
        "scheduling": {_snake(k): v for k, v in scheduling.items()},
        "integrations": [_integration(n, i) for n, i in enumerate(_list(fields, "integrations"))],
        "env_variables": _env(_list(fields, "envVariables")),
    }
    return config | {_snake(k): v for k, v in fields.items()}


def _mapping(value: Any, where: str) -> Json:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"runInput.{where}: expected an object, got {type(value).__name__}")
    return value


def _list(fields: Json, key: str) -> list[Any]:
    value = fields.pop(key, None)
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadRequest(f"runInput.{key}: expected a list, got {type(value).__name__}")
    return value


def _integration(n: int, item: Any) -> Json:
    if not isinstance(item, dict) or not isinstance(item.get("type"), str):
        raise BadRequest(f"runInput.integrations.{n}: expected {{type, params}}")
    params = _mapping(item.get("params"), f"integrations.{n}.params")
    return {"integration_type": item["type"]} | {_snake(k): v for k, v in params.items()}


def _env(items: list[Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for n, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("envKey"), str):
            raise BadRequest(f"runInput.envVariables.{n}: expected {{envKey, envValue}}")
        found[item["envKey"]] = item.get("envValue")
    return found


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


# --- clusters ---------------------------------------------------------------------------------


def instance(item: Instance) -> Json:
    return {
        "name": item.name,
        "gpuType": item.gpu_type or "None",
        "gpusPerNode": item.gpus_per_node,
        "cpus": None,
        "memory": None,
        "storage": None,
        "gpuNums": [item.gpus_per_node * n for n in range(1, max(item.nodes, 1) + 1)],
        "numNodes": item.nodes,
        "nodes": [],
    }


def run_line(line: RunLine, gpu_type: str | None) -> Json:
    return {
        "id": line.run_id,
        "createdAt": iso(line.created_at),
        "userName": line.user,
        "runName": line.run_name,
        "instance": line.cluster,
        "gpuNum": line.gpus,
        "gpuType": gpu_type,
        "estimatedEndTime": None,
        "maxDurationSeconds": None,
        "startTime": iso(line.since),
        "reason": line.reason or None,
        "scheduling": {
            "priority": line.priority.upper(),
            "retryOnSystemFailure": False,
            "preemptible": line.preemptible,
        },
    }


def status_names() -> frozenset[str]:
    return frozenset(s.value for s in RunStatus)


class RunSelection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Which runs a listing asks for (``mcli get runs``'s filters); times are ms."""

    names: list[str] = msgspec.field(default_factory=list)  # globs
    cluster: str | None = None
    before: int | None = None
    after: int | None = None
    gpu_type: str | None = None
    gpu_num: int | None = None
    statuses: list[RunStatus] | None = None
    user: str | None = None  # None: the caller's runs, unless all_users
    all_users: bool = False
    include_deleted: bool = False
    parent: str | None = None  # the children of the run of this name
    limit: int | None = 50
    #: ``<created_at>:<run_uid>`` of the last run of the page before (the web console's pages).
    cursor: str | None = None

    def by_name_only(self) -> bool:
        """Exact names and no other filter but whose runs: a lookup, not a search."""
        exact = self.names and not any(c in name for name in self.names for c in "*?[")
        others = (self.cluster, self.before, self.after, self.gpu_type, self.gpu_num)
        return (
            bool(exact)
            and all(value is None for value in others)
            and (self.statuses is None and self.parent is None and self.cursor is None)
        )


class WireRecord(msgspec.Struct, kw_only=True):
    """A recorded event as it crosses the API: the log's fields, decoded again on arrival."""

    position: str
    version: int
    kind: str
    body: str

    @classmethod
    def of(cls, record: Recorded) -> WireRecord:
        """``record`` as it leaves the server: secret hashes blanked (``events.model.redacted``)."""
        fields = codec.encode(redacted(record.event))
        return cls(
            position=record.position,
            version=record.version,
            kind=fields[codec.KIND].decode(),
            body=fields[codec.BODY].decode(),
        )

    def recorded(self) -> Recorded:
        fields = {
            codec.KIND: self.kind.encode(),
            codec.BODY: self.body.encode(),
            codec.VERSION: str(self.version).encode(),
        }
        return codec.recorded(self.position, fields)


# --- secrets as createSecretData and getSecrets carry them ------------------------------------

#: MAPI's type of each of runplane's (``MAPI_TO_MCLI_SECRET_TYPE`` read the other way).
MAPI_TYPES: Final[dict[SecretType, str]] = {
    "env": "ENV_VAR",
    "hf": "ENV_VAR",
    "mounted": "MOUNTED",
    "docker": "DOCKER_REGISTRY",
    "ssh": "SSH",
    "git": "GIT_SSH",
    "s3": "S3",
    "gcp": "GCP",
}
#: ``createSecretData``'s key of each type (``Secret.mapi_data``).
INPUT_KEYS: Final[dict[str, SecretType]] = {
    "envVarSecret": "env",  # or hf: an envVarSecret of the variable HF_TOKEN
    "mountedSecret": "mounted",
    "dockerRegistrySecret": "docker",
    "sshSecret": "ssh",
    "gitSSHSecret": "git",
    "s3Secret": "s3",
    "gcpSecret": "gcp",
}
NOT_KEPT: Final = {
    "sftpSSHSecret": "sftp-ssh",
    "ociSecret": "oci",
    "databricksSecret": "databricks",
}
ONE_VALUE: Final[frozenset[SecretType]] = frozenset({"env", "hf", "mounted", "ssh", "git", "gcp"})


def input_of(secret: Secret) -> Json:
    """``createSecretData`` for ``secret``, as the real client shapes it (the inverse of
    ``secret_of_input``): runplane's CLI and SDK send this."""
    wire_kind = "env" if secret.secret_type in secrets.ENV_TYPES else secret.secret_type
    key = next(k for k, kind in INPUT_KEYS.items() if kind == wire_kind)
    body: Json = {"name": secret.name}
    if secret.metadata:
        body["metadata"] = dict(secret.metadata)
    body["value"] = (
        secret.value.get("value", "") if secret.secret_type in ONE_VALUE else dict(secret.value)
    )
    return {key: body}
