"""A Bloom filter as bytes: a set of strings that never misses one put in it, and holds one
that was not about 1 % of the time (10 bits an item, 7 hashes).

Kept beside what it describes (a manifest's entry), so a lookup of one item opens only the
files that may hold it: the projector's cold rows (``projections.cold``) and the archive's
index of retired histories (``services.core.retired``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterator

#: A Bloom filter's bits per item and hashes: about 1 % false positives.
_BITS, _HASHES = 10, 7


def bloom(items: Collection[str]) -> bytes:
    """A Bloom filter of ``items``."""
    bits = bytearray(max(1, len(items) * _BITS // 8))
    for item in items:
        for at in _places(item, len(bits) * 8):
            bits[at // 8] |= 1 << (at % 8)
    return bytes(bits)


def may_hold(bits: bytes, item: str) -> bool:
    """False only if ``item`` was not put in the filter ``bits``; an empty one holds all."""
    if not bits:
        return True
    return all(bits[at // 8] >> (at % 8) & 1 for at in _places(item, len(bits) * 8))


def _places(item: str, size: int) -> Iterator[int]:
    digest = hashlib.blake2b(item.encode(), digest_size=16).digest()
    first, second = int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:], "little")
    return ((first + n * second) % size for n in range(_HASHES))
