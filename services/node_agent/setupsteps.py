"""What a rank's setup reports, and when it stops: one behaviour for every executor's setup
(``services.node_agent.process.setup``, ``services.node_agent.container.setup``).

- a step is reported only while the rank may go on (``_check``): the log said it is over
  (``RankGone``), or it is being stopped (``SetupAborted``, with the stop's reason);
- a failed step and the rank's exit are one append (``_end``), after which ``RankEnded``.
"""

from __future__ import annotations

from typing import Any

from events import model as ev
from services.node_agent.errors import RankEnded, RankGone, SetupAborted
from services.node_agent.executor import RankControl
from services.node_agent.job import RankJob
from services.node_agent.plan import exited
from services.node_agent.reporter import Reporter, new_id


class SetupSteps:
    reporter: Reporter

    def _check(self, control: RankControl) -> None:
        if control.killed:
            raise RankGone("the log says the rank is over")
        if control.stop_reason is not None:
            raise SetupAborted(control.stop_reason)

    def _fields(self, job: RankJob) -> dict[str, Any]:
        return self.reporter.fields(job.key)

    async def _report(self, job: RankJob, control: RankControl, *events: ev.AnyRunEvent) -> None:
        """Report ``events`` of one step, in one append."""
        self._check(control)
        await self.reporter.report(job.key, lambda _a, _r: list(events), setup=True)

    async def _end(
        self, job: RankJob, failure: ev.AnyRunEvent | None, *, reason: ev.Reason
    ) -> None:
        """Report the failed step (if any) and the rank's exit, in one append."""
        reporter = self.reporter
        gone = exited(job.key, reporter.node, reporter.actor, new_id, exit_code=None, reason=reason)
        events: list[ev.AnyRunEvent] = [failure, gone] if failure is not None else [gone]
        await reporter.report(job.key, lambda _a, _r: events)
        raise RankEnded
