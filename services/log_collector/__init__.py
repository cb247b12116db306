"""The log-collector: stores every output line per (run, attempt, rank), archives finished
attempts to files, serves archived lines over Redis, and knows each attempt's first failed rank.

Invariants (the modules say how each is kept):
- Each line ingested (``keys.log_ingest()``) is stored once in its rank's stream
  (``keys.rank_log``) under the ingest entry's own id, before the ingest entry is acknowledged
  (``ingest``). Only the holder of the collector lease (``services.core.lease``) copies lines,
  in id order, so a line refused as "id not above the stream's top" is one already stored.
- An attempt is archived only after its terminal event and once every ingest entry up to that
  event is stored; a rank's stream is deleted only after its file is on disk (``archive``).
- The first failed rank is the one whose failing ``rank.exited`` comes first in the log
  (``events``).
"""
