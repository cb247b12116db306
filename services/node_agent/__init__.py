"""The node-agent: one per node; runs the ranks the scheduler places on it.

``python -m services.node_agent`` (settings: ``services.node_agent.settings``). The tree:

- ``app``: the process: registration, heartbeat, folding the log, acting on ``plan``;
- ``plan`` (pure): what to do about a run; ``reporter``: events through the lifecycle rules;
- ``executor``: how the agent steers a rank, whatever runs it; ``pump``: the agent's sender of
  output to the ingest stream;
- ``process/``: the ``process`` executor (setup in the agent, the command under a shim);
- ``shim/``: the shim that outlives the agent, standard library only;
- ``kube/``: the ``kubernetes`` executor, a Pod per rank (imported only when configured);
- pure building blocks: ``image``, ``integrations``, ``environment``, ``hardware``, ``job``.
"""
