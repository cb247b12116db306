"""``from mcli import ...``: runplane's Python SDK under the name mcli's users already import.

It lives in ``cli.sdk`` beside the ``mcli`` command (both share the client, the run config and
the readers); this package only gives it mcli's import name, so code written for MosaicML's
``mcli`` runs unchanged against runplane. Keep it a re-export: nothing is defined here.
"""

from __future__ import annotations

from cli.sdk import *  # noqa: F403
from cli.sdk import __all__ as __all__
