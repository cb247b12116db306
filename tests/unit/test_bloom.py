"""The Bloom filters beside the archive's files (``events.bloom``): never a miss, rarely a
false hit."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from events.bloom import bloom, may_hold


@given(st.sets(st.text(min_size=1, max_size=12), min_size=1, max_size=200))
def test_a_bloom_filter_holds_everything_put_in_it(items: set[str]) -> None:
    bits = bloom(items)
    assert all(may_hold(bits, item) for item in items)


def test_a_bloom_filter_rarely_holds_what_was_not_put_in_it() -> None:
    rng = random.Random(4)
    bits = bloom({f"run{rng.getrandbits(64):x}" for _ in range(5000)})
    others = [f"other{n}" for n in range(20_000)]
    assert sum(may_hold(bits, o) for o in others) < len(others) * 0.03


def test_an_empty_filter_holds_everything() -> None:
    assert may_hold(b"", "anything")
