"""``python -m services.node_agent.shim <rank dir> <lock fd> <notify fd>``: one shim (``main``)."""

from __future__ import annotations

import sys
from pathlib import Path

from services.node_agent.shim.main import main

main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
