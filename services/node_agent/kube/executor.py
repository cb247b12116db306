"""The ``kubernetes`` executor: each rank is a Pod (see ``manifests`` for why not a Job).

The IO edge of the component. Blocking client calls run in threads (``api`` says why the
official synchronous client): creates and deletes through ``asyncio.to_thread``; the watch
and the log followers in daemon threads of their own, which hand what they read to the event
loop (``call_soon_threadsafe``) and never keep the process from exiting.

A rank's life (``run``): the run owner's secrets are read (``services.node_agent.secrets``; a
rank whose secrets cannot be opened fails before its Pod exists), its Pod is created (a name
taken already means it exists: adopted, never duplicated), then its Secrets (the owner's
secrets, its run token: ``secretobjects``, owned by the Pod), and rank 0 also creates the
attempt's headless Service; then every change the
watch delivers is observed (``podstatus``) and turned into events (``track``), reported in
order through the ``Reporter`` as the ``process`` executor reports them; output is followed
per container (``logs``) and drained before the exit is reported. A stop deletes the Pod with
the grace period (SIGTERM, then SIGKILL from the kubelet); a kill (the log says the rank is
over) deletes it at once. A rank whose exit is reported has its Pod deleted and its record
(``ledger``) dropped.

After a restart (``prepare`` lists this agent's Pods by label before ``local_ranks``): a rank
with a Pod is adopted and watched as if the agent had never died (events it missed are
reported late, in order); a rank recorded but without a Pod gets its Pod now (if the log still
wants it); a Pod whose rank the log says is over is deleted.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import redis.asyncio as aioredis
import structlog

from events import model as ev
from events.lifecycle import AttemptState, RankState
from services.core.aio import first_of
from services.core.sealing import KeyringFile
from services.core.secretstore import SecretValues
from services.node_agent import integrations, runtoken
from services.node_agent.errors import RankEnded, RankGone
from services.node_agent.executor import RankControl
from services.node_agent.incontainer import BadIntegration
from services.node_agent.job import RankJob, RankKey
from services.node_agent.kube import manifests, naming, podstatus, track
from services.node_agent.kube.api import KubeApi, Refused, connect
from services.node_agent.kube.ledger import Ledger
from services.node_agent.kube.logs import Follower
from services.node_agent.kube.manifests import PodOptions
from services.node_agent.kube.podstatus import Init, Observation
from services.node_agent.kube.secretobjects import Layout, layout, objects
from services.node_agent.kube.watch import Json, PodWatch, WatchError
from services.node_agent.plan import exited, rank_lost
from services.node_agent.pump import OutputPump
from services.node_agent.reporter import Reporter, new_id
from services.node_agent.secrets import SecretsUnavailable, run_secrets
from services.node_agent.settings import NodeAgentSettings

log = structlog.get_logger(__name__)

T = TypeVar("T")
_RECHECK_S = 5.0  # a pull back-off is measured even when the Pod does not change
_DRAIN_S = 15.0  # output of an ended container still on its way
_SYNC_WARN_S = 10.0
_MISSING: Json = {}


def pod_options(settings: NodeAgentSettings) -> PodOptions:
    """What the agent's ``settings`` add to every Pod it makes."""
    return PodOptions(
        namespace=settings.kube_namespace,
        node=settings.node,
        actor=settings.actor,
        grace_period_s=settings.grace_period_s,
        run_as_user=settings.kube_run_as_user,
        kube_node=settings.kube_node_name,
        python=settings.kube_python,
        api_url=settings.api_url,
    )


class KubeExecutor:
    def __init__(
        self,
        settings: NodeAgentSettings,
        reporter: Reporter,
        client: aioredis.Redis,
        api: KubeApi | None = None,
    ) -> None:
        self.settings = settings
        self.reporter = reporter
        self.client = client
        self.api = api or KubeApi(
            connect(
                in_cluster=settings.kube_in_cluster,
                config_file=settings.kube_config,
                context=settings.kube_context,
            ),
            settings.kube_namespace,
            naming.node_selector(settings.node),
        )
        self.options = pod_options(settings)
        self.ledger = Ledger(settings.data_path)
        self.values = SecretValues(client)
        keyring = settings.secrets_keyring_file
        self.keyring = None if keyring is None else KeyringFile(keyring)
        self.pods: dict[str, Json | None] = {}  # by Pod name; None: deleted
        self._changed: dict[str, asyncio.Event] = {}
        self._watch: PodWatch | None = None

    # --- the agent's side -------------------------------------------------------------

    async def prepare(self) -> None:
        """Start the watch; return once it has listed this agent's Pods."""
        loop = asyncio.get_running_loop()

        def sink(name: str, pod: Json | None) -> None:
            loop.call_soon_threadsafe(self._on_pod, name, pod)

        self._watch = PodWatch(self.api, sink)
        threading.Thread(target=self._watch.run, name="pod-watch", daemon=True).start()
        while not await asyncio.to_thread(self._watch.synced.wait, _SYNC_WARN_S):
            log.warning("kube.waiting_for_api", namespace=self.settings.kube_namespace)

    def isolation(self) -> str:
        return "a Pod per rank (restricted Pod Security Standard, no service-account token)"

    def close(self) -> None:
        if self._watch is not None:
            self._watch.stop()

    def local_ranks(self) -> list[RankKey]:
        found = {
            key
            for pod in self.pods.values()
            if pod is not None and (key := naming.key_of(pod.get("metadata") or {})) is not None
        }
        return sorted(found | set(self.ledger.keys()))

    def begin(self, key: RankKey) -> None:
        self.ledger.begin(key)

    async def run(
        self, key: RankKey, job: RankJob | None, control: RankControl, *, resume: bool
    ) -> None:
        name = naming.pod_name(key)
        with structlog.contextvars.bound_contextvars(
            run=key.run_id, attempt=key.attempt, rank=key.rank, pod=name
        ):
            rank = _Rank(self, key, job, control, name)
            try:
                await rank.run(resume=resume)
            except RankEnded:
                pass
            except RankGone as exc:
                log.info("rank.gone", why=str(exc))
                await self._delete(name, grace_s=0)
            else:
                await self._delete(name, grace_s=None)
            finally:
                await rank.close()
            self.ledger.done(key)

    # --- shared by the ranks ------------------------------------------------------------

    def _on_pod(self, name: str, pod: Json | None) -> None:
        self.pods[name] = pod
        if (event := self._changed.get(name)) is not None:
            event.set()

    def changed(self, name: str) -> asyncio.Event:
        return self._changed.setdefault(name, asyncio.Event())

    async def call(self, fn: Callable[..., T], *args: Any, until: Callable[[], bool]) -> T:
        """``fn(*args)`` in a thread; an API server that does not answer is waited for (with
        back-off) until it does or ``until()`` says to give up (``RankGone``)."""
        backoff = 0.5
        while True:
            try:
                return await asyncio.to_thread(fn, *args)
            except WatchError as exc:
                if until():
                    raise RankGone("the log says the rank is over") from exc
                log.warning("kube.retry", call=getattr(fn, "__name__", "?"), error=str(exc))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)

    async def _delete(self, name: str, *, grace_s: int | None) -> None:
        """Delete the Pod, as far as the API lets us: a Pod left behind is found again by
        label after a restart (its record stays too, see ``run``)."""
        try:
            await self.call(self.api.delete_pod, name, grace_s, until=lambda: True)
        except (RankGone, Refused) as exc:
            log.warning("pod.delete_failed", error=str(exc))
        self._changed.pop(name, None)


class _Rank:
    """One rank's Pod, from its creation to its deletion."""

    def __init__(
        self, executor: KubeExecutor, key: RankKey, job: RankJob | None, control: RankControl,
        name: str,
    ) -> None:  # fmt: skip
        self.x = executor
        self.key = key
        self.job = job
        self.control = control
        self.name = name
        self.reporter = executor.reporter
        self.tracker = track.Tracker(
            executor.settings.kube_image_pull_backoff_s,
            executor.settings.kube_unschedulable_after_s,
        )
        self.pump = OutputPump(executor.client, key.run_id, key.attempt, key.rank)
        self.followers: dict[str, Follower] = {}
        self.deleting = False
        self.secrets: Layout | None = None  # read at the Pod's creation (or again, adopted)

    async def run(self, *, resume: bool) -> None:
        self.pump.start()
        changed = self.x.changed(self.name)
        if self.x.pods.get(self.name) is None:
            if resume and self.name in self.x.pods:
                log.info("rank.pod_gone_while_away")
            else:
                await self._create()
        elif resume:
            log.info("rank.adopted")
        await self._token()
        await self._secret_objects()
        await self._service()
        while True:
            if self.control.killed:
                raise RankGone("the log says the rank is over")
            pod = self.x.pods.get(self.name, _MISSING)
            if pod is None:
                steps = self.tracker.vanished(stopping=self.control.stopping)
            elif pod is _MISSING:
                steps = []  # created, and the watch has not seen it yet
            else:
                seen = podstatus.observe(pod)
                steps = self.tracker.step(seen, time.monotonic(), stopping=self.deleting)
                self._follow(seen)
            await self._report(steps)
            if self.tracker.ended:
                return
            if self.control.stop_reason is not None and not self.deleting:
                log.info("rank.stopping", grace_s=self.x.settings.grace_period_s)
                self.deleting = True
                await self.x.call(self.x.api.delete_pod, self.name, None, until=lambda: False)
            changed.clear()
            self.control.changed.clear()
            await first_of([changed, self.control.changed], within=_RECHECK_S)

    async def close(self) -> None:
        for follower in self.followers.values():
            follower.stop()
        await self.pump.close(10.0)

    # --- creating ------------------------------------------------------------------------

    async def _create(self) -> None:
        job, control = self.job, self.control
        if control.killed:
            raise RankGone("the log says the rank is over")
        if job is None:
            await self._end_now(
                rank_lost("the log no longer describes the rank, and it has no Pod")
            )
        if control.stop_reason is not None:
            await self._end_now(control.stop_reason)  # stopped before it began
        assert job is not None
        self.secrets = await self._read_secrets(job)
        try:
            manifest = manifests.pod(job, self.x.options, self.secrets)
        except BadIntegration as exc:
            log.info("rank.integration_refused", index=exc.index, error=str(exc))
            failed = ev.IntegrationFailed(
                **self.reporter.fields(self.key), index=exc.index,
                integration_type=exc.integration_type, error=str(exc),
            )  # fmt: skip
            reason = ev.Reason(category="user", code="IntegrationFailed", message=str(exc))
            await self._end_now(reason, failed)
        try:
            created = await self.x.call(self.x.api.create_pod, manifest, until=self._over)
        except Refused as exc:
            log.warning("pod.refused", error=str(exc))
            await self._end_now(rank_lost(f"the cluster refused its Pod: {exc}"))
        if created is None:
            log.info("pod.exists")  # created before a restart, or by a retried request
        else:
            log.info("pod.created", uid=(created.get("metadata") or {}).get("uid"))
            self.x.pods.setdefault(self.name, created)

    async def _service(self) -> None:
        """Rank 0's agent creates the attempt's headless Service, owned by its Pod."""
        pod = self.x.pods.get(self.name)
        if self.job is None or self.key.rank != 0 or not pod:
            return
        uid = str((pod.get("metadata") or {}).get("uid", ""))
        try:
            service = manifests.service(self.job, self.x.options, owner_uid=uid)
            await self.x.call(self.x.api.create_service, service, until=self._over)
        except Refused as exc:  # the ranks cannot find rank 0: they fail, and say so
            log.warning("service.refused", error=str(exc))

    async def _token(self) -> None:
        """The rank's run token in its Secret, owned by its Pod, unless it is there already
        (a restarted agent); the Pod waits for it to mount."""
        pod = self.x.pods.get(self.name)
        if self.x.options.api_url is None or not pod:
            return
        secret = naming.token_secret_name(self.key)
        if await self.x.call(self.x.api.secret_exists, secret, until=self._over):
            return
        token = await runtoken.issue(self.reporter, self.key)
        uid = str((pod.get("metadata") or {}).get("uid", ""))
        manifest = manifests.token_secret(self.key, self.x.options, token, owner_uid=uid)
        try:
            await self.x.call(self.x.api.create_secret, manifest, until=self._over)
        except Refused as exc:  # its Pod would wait for the mount for ever
            log.warning("secret.refused", error=str(exc))
            await self.x.call(self.x.api.delete_pod, self.name, 0, until=lambda: False)
            await self._end_now(rank_lost(f"the cluster refused its run token's Secret: {exc}"))

    async def _read_secrets(self, job: RankJob) -> Layout:
        """The owner's secrets laid out for the Pod; the rank fails if they cannot be opened."""
        try:
            found = await run_secrets(self.x.values, job.owner, self.x.keyring)
        except SecretsUnavailable as exc:
            log.warning("rank.secrets_unavailable", error=str(exc))
            await self._end_now(
                ev.Reason(category="system", code="SecretsUnavailable", message=str(exc))
            )
        if found:
            log.info("rank.secrets", owner=job.owner, names=found.names)  # never a value
        return layout(self.key, found, job.spec.image)

    async def _secret_objects(self) -> None:
        """The owner's secrets in the rank's Secrets, owned by its Pod, unless they are there
        already (a restarted agent: read again); the Pod waits for them."""
        pod = self.x.pods.get(self.name)
        if self.job is None or not pod:
            return
        plan = self.secrets if self.secrets is not None else await self._read_secrets(self.job)
        uid = str((pod.get("metadata") or {}).get("uid", ""))
        for manifest in objects(self.key, self.x.options.namespace, plan, owner_uid=uid):
            try:
                await self.x.call(self.x.api.create_secret, manifest, until=self._over)
            except Refused as exc:  # its Pod would wait for the mount for ever
                log.warning("secret.refused", error=str(exc))
                await self.x.call(self.x.api.delete_pod, self.name, 0, until=lambda: False)
                await self._end_now(rank_lost(f"the cluster refused its secrets' Secret: {exc}"))

    def _over(self) -> bool:
        return self.control.killed

    # --- following -------------------------------------------------------------------------

    def _follow(self, seen: Observation) -> None:
        names = [
            manifests.integration_container(index)
            for index, state in enumerate(seen.integrations)
            if state is not Init.WAITING and not seen.started
        ]
        if seen.started:
            names = [manifests.integration_container(i) for i in range(len(seen.integrations))]
            names.append(manifests.MAIN)
        record = self.x.ledger.get(self.key)
        for container in names:
            if container in self.followers:
                continue
            follower = Follower(
                self.x.api, self.name, container, self.pump, asyncio.get_running_loop(),
                sent_until=record.sent_until.get(container) if record else None,
                record=functools.partial(self.x.ledger.sent, self.key, container),
                finished=functools.partial(self._container_over, container),
            )  # fmt: skip
            self.followers[container] = follower
            follower.start()

    def _container_over(self, container: str) -> bool:
        """Called from a follower's thread: reads only."""
        pod = self.x.pods.get(self.name)
        return self.tracker.ended or podstatus.container_ended(pod, container)

    async def _drain(self) -> None:
        """Let the followers read the ended containers' last lines, for a bounded time."""
        deadline = time.monotonic() + _DRAIN_S
        for follower in self.followers.values():
            left = max(0.0, deadline - time.monotonic())
            await asyncio.to_thread(follower.done.wait, left)

    # --- reporting ---------------------------------------------------------------------------

    async def _report(self, steps: list[track.Step]) -> None:
        if not steps:
            return
        events: list[ev.AnyRunEvent] = []
        running: ev.RankRunning | None = None
        ended: track.Ended | None = None
        for step in steps:
            if isinstance(step, track.Running):
                running = ev.RankRunning(**self.reporter.fields(self.key))
                events.append(running)
            elif isinstance(step, track.Ended):
                ended = step
            else:
                events.append(self._event(step))
        if ended is not None:
            await self._drain()
            log.info("rank.exited", exit_code=ended.exit_code, code=ended.code)
        gone_id = new_id()  # one id on every try: a retried append is recognised
        stopping = self.deleting

        def build(attempt: AttemptState, rank: RankState) -> list[ev.AnyRunEvent]:
            out = [e for e in events if not (e is running and rank.running)]
            if ended is not None:
                why = track.reason(ended, attempt, stopping=stopping)
                out.append(
                    exited(
                        self.key,
                        self.reporter.node,
                        self.reporter.actor,
                        lambda: gone_id,
                        exit_code=ended.exit_code,
                        signal=ended.signal,
                        reason=why,
                    )
                )
            return out

        for event in events:
            log.info("rank.report", reported=type(event).__name__)
        await self.reporter.report(self.key, build)

    def _event(self, step: track.Step) -> ev.AnyRunEvent:
        fields = self.reporter.fields(self.key)
        image = self.job.spec.image if self.job is not None else ""
        match step:
            case track.PullStarted():
                return ev.ImagePullStarted(**fields, image=image)
            case track.PullFinished():
                return ev.ImagePullFinished(**fields, image=image)
            case track.PullFailed(error=error):
                return ev.ImagePullFailed(**fields, image=image, error=error)
            case track.IntegrationStarted(index=index):
                return ev.IntegrationStarted(
                    **fields, index=index, integration_type=self._kind(index)
                )
            case track.IntegrationFinished(index=index):
                kind = self._kind(index)
                return ev.IntegrationFinished(**fields, index=index, integration_type=kind)
            case track.IntegrationFailed(index=index, error=error):
                kind = self._kind(index)
                return ev.IntegrationFailed(
                    **fields, index=index, integration_type=kind, error=error
                )
        raise AssertionError(f"not an event of its own: {step!r}")

    def _kind(self, index: int) -> str:
        specs = self.job.spec.integrations if self.job is not None else []
        return integrations.integration_type(specs[index]) if index < len(specs) else "unknown"

    async def _end_now(self, reason: ev.Reason, failure: ev.AnyRunEvent | None = None) -> NoReturn:
        """Report the rank's exit before its Pod ran (and the failed step, in one append)."""
        gone = exited(
            self.key, self.reporter.node, self.reporter.actor, new_id,
            exit_code=None, reason=reason,
        )  # fmt: skip
        events: list[ev.AnyRunEvent] = [failure, gone] if failure is not None else [gone]
        await self.reporter.report(self.key, lambda _a, _r: events)
        raise RankEnded
