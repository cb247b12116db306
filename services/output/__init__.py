"""Run output (what a rank's command prints), shared by the node-agent, the log-collector and
the readers; not the services' own structlog lines (``services.core.logging``).

- ``ingest``: the ingest stream's entry format and its writer (node-agent -> log-collector);
- ``reading``: reading one rank's lines, live or archived, and the archive's record format.
"""
