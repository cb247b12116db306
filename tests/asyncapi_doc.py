"""``docs/asyncapi.yaml``: the event contract that ``events.asyncapi`` generates, kept as a file.

``tests/unit/test_asyncapi.py`` checks that the file equals a fresh rendering, so an event
added, a field changed or a version bumped in ``events.model`` shows up in the document or
fails the tests.

    python -m tests.asyncapi_doc          # print the document
    python -m tests.asyncapi_doc --write  # replace docs/asyncapi.yaml
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from events.asyncapi import installed_version, render

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "asyncapi.yaml"
HEADER = (
    "# The event contract (AsyncAPI 3.0), generated from events/model.py and events/keys.py by\n"
    "# `python -m tests.asyncapi_doc --write`: do not edit by hand.\n"
)


def rendered() -> str:
    return HEADER + render(installed_version())


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.asyncapi_doc")
    parser.add_argument("--write", action="store_true", help=f"replace {DOC.name}")
    text = rendered()
    if parser.parse_args().write:
        DOC.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
