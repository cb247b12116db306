"""The node-agent: one per node; runs the ranks the scheduler places on it.

``python -m services.node_agent`` (settings: ``services.node_agent.settings``). The tree:

- ``app``: the process: registration, heartbeat, folding the log, acting on ``plan``;
- ``plan`` (pure): what to do about a run; ``reporter``: events through the lifecycle rules;
- ``executor``: how the agent steers a rank; ``process``: the ``process`` executor, with
  ``setup`` (image, integrations) in the agent and the command under a ``shim`` (``follow``)
  that outlives the agent; ``rankdir`` / ``ondisk``: what survives on disk;
- output: ``lines`` (splitting), ``buffer`` (bounded, drops marked), ``pump`` (the agent's
  sender), ``entries`` and ``resp`` (the shim's, standard library only);
- pure building blocks: ``image``, ``integrations``, ``environment``, ``hardware``, ``job``.
"""
