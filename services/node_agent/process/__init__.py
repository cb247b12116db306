"""The ``process`` executor: each rank's command runs under its own shim on this machine.

- ``executor``: the IO edge: begins a rank, runs its setup, forks its shim, reports its exit,
  and after a restart resumes what it finds on disk;
- ``setup``: a rank's STARTING work in the agent (image check, integrations in order);
- ``rankdir``: what a rank leaves on the node's disk, which survives a kill -9 of the agent.
"""
