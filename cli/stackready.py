"""Waiting for the local stack (``cli.stack.LocalStack``) to be ready: every node registered
(as the projector's utilization model shows, so the projector answers too), the scheduler and
the log-collector holding their leases, the API server answering, and no process exited
meanwhile (``mcli dev up``, the e2e tests, the benches that start a stack)."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request

from cli.stack import LocalStack, StackConfig, StackError
from cli.stackkey import read_key
from events import keys
from events.model import NodeRegistered
from projections import query
from services.core.store import EventStore

READY_S = 90.0
POLL_S = 0.2


async def registrations_before(stack: LocalStack, names: list[str]) -> dict[str, int]:
    """How often each node among ``names`` has registered so far (none while the log is down:
    readiness is then the whole wait)."""
    nodes = [node for name in names if (node := stack.node_of(name)) is not None]
    if not nodes or set(stack.servers) & set(names):
        return {}
    store = operator_store(stack)
    try:
        return {node: await _registrations(store, node) for node in nodes}
    finally:
        await store.close()


async def until_running(stack: LocalStack) -> None:
    deadline = time.monotonic() + READY_S
    while missing := stack.missing():
        if time.monotonic() > deadline:
            raise StackError(f"{', '.join(missing)} did not start again within {READY_S:g}s")
        await asyncio.sleep(POLL_S)


async def _registered(store: EventStore, seen: dict[str, int]) -> bool:
    """Each node of ``seen`` registered more often than ``seen`` says."""
    for node, count in seen.items():
        if await _registrations(store, node) <= count:
            return False
    return True


async def _registrations(store: EventStore, node: str) -> int:
    return sum(isinstance(r.event, NodeRegistered) for r in await store.history(f"node:{node}"))


async def wait_ready(
    stack: LocalStack, config: StackConfig, *, registered_again: dict[str, int] | None = None
) -> None:
    """Until the stack is ready (see the module), and each node of ``registered_again`` has
    registered more often than the count given."""
    store = operator_store(stack)
    deadline = time.monotonic() + READY_S
    restarts = {name: record.restarts for name, record in stack.records().items()}
    key = read_key(stack.state_dir)
    try:
        while True:
            records = stack.records()
            exited = [n for n, r in records.items() if r.restarts > restarts.get(n, r.restarts)]
            if exited:
                raise StackError(
                    f"{', '.join(exited)} exited while starting; its log ends with:\n"
                    + "\n".join(_tail(stack, exited[0]))
                )
            if (
                await ready(store, config)
                and await _registered(store, registered_again or {})
                and await asyncio.to_thread(api_answers, stack.api_url, key)
            ):
                return
            if time.monotonic() > deadline:
                raise StackError(
                    f"the stack was not ready within {READY_S:g}s: see the logs in "
                    f"{stack.state_dir / 'logs'}"
                )
            await asyncio.sleep(POLL_S)
    finally:
        await store.close()


def operator_store(stack: LocalStack) -> EventStore:
    """The stack's log, as its operator works on it (readiness, the admin's key)."""
    return EventStore.from_settings(stack.operator_settings())


def _tail(stack: LocalStack, name: str) -> list[str]:
    return stack.log_of(name).read_text(errors="replace").splitlines()[-5:]


async def ready(store: EventStore, config: StackConfig) -> bool:
    leases = await store.redis.exists(keys.scheduler_lease(), keys.log_collector_lease())
    if leases != 2:
        return False
    clusters = await query.utilization(store.redis, [config.cluster])
    nodes = sum(i.nodes for c in clusters for i in c.instances)
    return nodes >= config.nodes


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def api_answers(url: str, key: str | None) -> bool:
    """The API server at ``url`` answers a POST of ``{ __typename }``: with ``key``, as that
    key's user (200); without one, a refusal (401) is its answer."""
    request = urllib.request.Request(  # noqa: S310 - the stack's own http:// URL
        url,
        data=json.dumps({"query": "{ __typename }"}).encode(),
        headers={"Content-Type": "application/json", **({"Authorization": key} if key else {})},
        method="POST",
    )
    try:
        with _NO_PROXY.open(request, timeout=2.0) as response:
            return bool(response.status == 200)
    except urllib.error.HTTPError as refused:
        return key is None and refused.code == 401
    except (OSError, ValueError):
        return False
