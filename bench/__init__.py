"""Benchmarks of runplane, run by hand or as CI smoke tests: ``python -m bench.<module>``.

Each module measures one part and prints its figures as ratios against a baseline measured in
the same run. ``bench.log``, for the event log, starts its own valkey-server (AOF,
``appendfsync always``, in a temp dir), measures ``EventStore.append`` and
``EventStore.replay`` against plain ``XADD`` / ``XRANGE`` through the same client, and adds a
breakdown and experiments (``bench.replay_variants``); ``--quick`` is its CI smoke size and
``--help`` lists the rest.

Nothing here is imported by the services: benchmarks and their experiments live only here.
"""
