"""The ``kubernetes`` executor: each rank of an attempt runs as one Pod.

- ``naming``: names, labels and annotations that tie a Pod to its run, attempt and rank (pure);
- ``manifests``: a ``RankJob`` as a Pod and the attempt's headless Service (pure);
- ``podstatus``: a Pod object as a lifecycle observation (pure);
- ``track``: successive observations of one rank as the events to report (pure);
- ``watch``: one watch over this agent's Pods, resumed from its resourceVersion, re-listed
  on 410 Gone;
- ``api``: the only module that imports the ``kubernetes`` client (typed, blocking);
- ``logs``: a Pod's containers' output to the log-collector's ingest stream;
- ``ledger``: the ranks begun on this node, on disk, until their Pod exists;
- ``executor``: the IO edge that puts them together.
"""
