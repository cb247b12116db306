"""Read models folded from the event log: run status, attempts, billing, audit, utilization.

Each fold (one module each) is pure: it takes recorded events in log order and keeps its own
state, says which of its rows an event changed, and renders those rows. Nothing in a fold reads
a clock, Redis or the environment; times are the log's own (``event.time``).

The engine (``projections.engine``) feeds events to several folds and skips any event at or
before a fold's checkpoint; the runner (``projections.runner``) stores the changed rows of a
batch and every fold's checkpoint in one Redis transaction, rebuilds a fold from position zero
beside the one readers use, and switches when the new build has caught up. ``projections.query``
is the read API of the CLI and SDK.

Invariant: the rows of a projection are a function of the log alone. Folding the whole log from
zero (``rebuild``) gives exactly the rows the projector keeps current, crashes or not.
"""
