"""``mcli admin secrets rotate-key``: a new key for the keyring, every sealed value under it, the
old keys dropped once no value uses them. An operator's command, like ``mcli projections
rebuild``: it works on the store with the operator's login and on the keyring file itself.

The steps, each safe to be cut short (run the command again: nothing is lost):
1. the keyring file gets a new newest key, the old ones kept: from now on the API seals under
   the new key (it re-reads the file when it changes), and every value still opens;
2. every sealed value not under the new key is sealed again under it, each replaced only if it
   is still the value that was read (a create or a delete meanwhile wins). A value of no live
   secret (its ``secret.created`` deleted or never appended: a crash between a value's write and
   its event) is removed on the way. Values are read before their owner's history, so a value
   whose event is being appended is never taken for one of no live secret;
3. the keyring file keeps the new key and any key a value still uses;
4. a value sealed under a dropped key meanwhile (an API that read the old file just before
   step 3) is sealed again with the keys this command still holds; the file is then rewritten
   if a pass left a value under a key it dropped.
Killed after 1 or 2, the keyring holds old and new keys and every value opens; run it again (it
adds one more key and ends with it alone).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from services.api.accounts import load_user
from services.core import sealing
from services.core.sealing import Keyring, SealingError
from services.core.secretstore import SecretValues
from services.core.store import EventStore

_PASSES = 5


@dataclass
class Rotated:
    new_key: str
    dropped: list[str] = field(default_factory=list)
    resealed: int = 0
    removed: int = 0
    values: int = 0
    #: Values that did not open (changed or damaged): left as they are, named here.
    refused: list[str] = field(default_factory=list)


async def rotate(store: EventStore, path: Path) -> Rotated:
    old = sealing.load_keyring(path)
    full = old.adding(*sealing.draw_key())
    sealing.write_keyring(path, full)
    rotated = Rotated(new_key=full.newest)
    values = SecretValues(store.redis)
    await _reseal_all(store, values, full, rotated)
    used, _ = await _keys_in_use(values)
    kept = full.keeping(used)
    sealing.write_keyring(path, kept)
    for _ in range(_PASSES):  # step 4: what an API sealed under a dropped key meanwhile
        if not await _reseal_all(store, values, full, rotated):
            break
    used, rotated.values = await _keys_in_use(values)
    if not used <= set(kept.ids):  # a value left under a dropped key (it did not open)
        kept = full.keeping(used)
        sealing.write_keyring(path, kept)
    rotated.dropped = [key_id for key_id in full.ids if key_id not in kept.ids]
    rotated.refused = sorted(set(rotated.refused))
    return rotated


async def _reseal_all(
    store: EventStore, values: SecretValues, keyring: Keyring, rotated: Rotated
) -> bool:
    """One pass over every stored value; whether it changed any."""
    changed = False
    async for owner in values.owners():
        stored = await values.all(owner)  # first the values, then the history: see the module
        live = await _live(store, owner)
        for name, data in sorted(stored.items()):
            try:
                secret_id = sealing.peek(data).secret_id
            except SealingError:
                secret_id = None
            if secret_id is None or live.get(name) != secret_id:
                if await values.remove(owner, name, secret_id):
                    rotated.removed += 1
                    changed = True
                continue
            try:
                resealed = sealing.reseal(keyring, owner, name, data)
            except SealingError:
                rotated.refused.append(f"{name} of {owner}")
                continue
            if resealed is not None and await values.replace(owner, name, data, resealed):
                rotated.resealed += 1
                changed = True
    return changed


async def _live(store: EventStore, owner: str) -> dict[str, str]:
    """``owner``'s live secrets by name: their ids, from their history."""
    state = await load_user(store, owner)
    return {} if state is None else {n: s.secret_id for n, s in state.secrets.items()}


async def _keys_in_use(values: SecretValues) -> tuple[set[str], int]:
    """The key ids the stored values are sealed under, and how many values there are."""
    used: set[str] = set()
    count = 0
    async for owner in values.owners():
        for data in (await values.all(owner)).values():
            count += 1
            try:
                used.add(sealing.peek(data).key_id)
            except SealingError:
                continue
    return used, count
