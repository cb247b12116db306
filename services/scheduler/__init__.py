"""The scheduler: queue, placement, lifecycle outcomes, retries, node loss. One active instance.

Pure core (no IO; time, ids and settings passed in): ``cluster`` (the state folded from the
log), ``placement`` (where a request's shape, by ``events.fit``, is placed now), ``progress``
(what a placed attempt's events mean), ``queue`` (one cluster's queue pass and preemption),
``round`` (``decide``: one round of all of it, as ``decision.Decision`` appends). Edges:
``services.core.lease`` (who is active), ``app`` (the process), ``settings``;
``python -m services.scheduler`` runs it.
"""
