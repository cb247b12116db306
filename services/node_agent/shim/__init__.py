"""The shim: one per rank, a supervisor of the command that outlives the node-agent.

Standard library only, every module: a shim starts (or is forked) per rank and must reach its
command in milliseconds, so nothing here may import redis-py, msgspec or the services' core.
The agent's side uses the pure pieces too (``lines``, ``buffer``).

- ``main``: a shim's life, from its signal handlers to ``exit.json``; ``__main__`` runs it;
- ``supervisor``: the command's process and what the shim was told (stop, kill);
- ``follow``: the command's output to the ingest stream while it runs;
- ``lines`` (splitting), ``buffer`` (bounded, drops marked), ``entries`` (the ingest format),
  ``resp`` (a minimal Redis client);
- ``ondisk``: a rank's file names and the primitives that write them and signal processes;
- ``forkserver``: forks a shim per rank from a process that has them imported.
"""
