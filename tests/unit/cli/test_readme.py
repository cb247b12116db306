"""The README's user part lists every function of the SDK (``from mcli import ...``)."""

from __future__ import annotations

from pathlib import Path

import mcli

README = Path(__file__).resolve().parents[3] / "README.md"


def test_the_readme_lists_every_sdk_function() -> None:
    text = README.read_text()
    functions = [name for name in mcli.__all__ if name[0].islower()]
    assert functions
    assert [name for name in functions if f"`{name}(" not in text] == []
    assert "`Run.to_dict()`" in text
