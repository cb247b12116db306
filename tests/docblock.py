"""A generated block of a docs page, between a begin and an end marker: read the copy the page
holds, or replace it by a fresh rendering (``python -m tests.<table> --write``)."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path


def copy(text: str, begin: str, end: str) -> str | None:
    """The block in ``text``, markers included; None if it has none."""
    match = re.search(re.escape(begin) + r".*?" + re.escape(end), text, flags=re.DOTALL)
    return match.group(0) if match else None


def main(prog: str, doc: Path, begin: str, end: str, render: Callable[[], str]) -> int:
    """Print the rendering, or with ``--write`` replace the copy in ``doc`` by it."""
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--write", action="store_true", help=f"replace the copy in {doc.name}")
    rendered = render()
    if not parser.parse_args().write:
        print(rendered)
        return 0
    text = doc.read_text()
    current = copy(text, begin, end)
    if current is None:
        print(f"{doc} has no {begin!r} ... {end!r} block to replace", file=sys.stderr)
        return 1
    doc.write_text(text.replace(current, rendered))
    return 0
